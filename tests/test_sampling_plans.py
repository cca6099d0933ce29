"""The seam between controllers and engines: every controller declares how it samples through a typed plan
(temperature.base: PerRequest, PerPosition, InModelHead), the engines dispatch on the plan's type only, and
the introspective head's draw is one pure function."""

from pathlib import Path

import pytest
import torch

from thermorl.config import CONTROLLERS, load_config
from thermorl.temperature import ControllerEnv, StepContext, build_controller
from thermorl.temperature.base import InModelHead, PerPosition, PerRequest
from thermorl.temperature.introspective import head_draw

SRC = Path(__file__).resolve().parents[1] / "src" / "thermorl"


def _controller(name, *overrides):
    config = load_config(None, [f"temperature.controller={name}", *overrides])
    env = ControllerEnv(16, 10, torch.device("cpu"), 2, 0, token_classes=("choice", "result"),
                        next_token_class=lambda ids: "result" if ids and ids[-1] == 7 else "choice")  # by_class's
    return build_controller(config.temperature, env)


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_every_registered_controller_declares_a_plan_both_engines_run(name):
    """Each built-in controller's plan is one of the three kinds, and thermorl's sampler's ``choose`` agrees
    with it: the per-request temperatures, or the rule at the step's position."""
    controller = _controller(name)
    controller.start(4, 3)
    plan = controller.sampling()
    assert isinstance(plan, (PerRequest, PerPosition, InModelHead))
    logits = torch.randn(4, 11, generator=torch.Generator().manual_seed(0))
    prefixes = torch.tensor([[1] * 11 + [7], [2] * 12, [7] * 12, [3] * 12])  # the completions so far
    ctx = StepContext(logits, torch.randn(4, 16), 12, torch.arange(4), 3, prefixes)
    tau, _ = controller.choose(ctx)
    assert tau.shape == (4,) and torch.isfinite(tau).all()
    if isinstance(plan, PerRequest):
        assert torch.equal(tau, plan.temperatures.float().reshape(-1).expand(4))
    elif isinstance(plan, PerPosition):
        extra = [prefixes.tolist()] if plan.reads_prefix else []
        assert torch.equal(tau, plan.rule(logits, torch.full((4,), 12), *extra))
    else:
        assert plan.module is controller.module


@pytest.mark.parametrize("head", ["beta", "bins"])
def test_the_heads_choose_is_its_pure_draw(head):
    """IntrospectiveController.choose = head_draw(head(h), previous, generator) on the same generator state (the
    function the vLLM engine calls per request through the plan); a row whose gate did not fire keeps its
    previous temperature."""
    controller = _controller("introspective", f"temperature.introspective.head={head}")
    with torch.no_grad():
        controller.head.out.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    controller.start(6, 1)
    plan = controller.sampling()
    hidden = torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    state = controller.generator.get_state()
    tau, actions = controller.choose(StepContext(torch.zeros(6, 5), hidden, 0, torch.arange(6), 1))
    replay = torch.Generator().set_state(state)
    again, drawn = plan.draw(controller.head(hidden), torch.full((6,), controller.config.tau_init), replay)
    assert torch.equal(tau, again)
    assert all(torch.equal(actions.present()[k], v) for k, v in drawn.present().items())
    assert set(actions.present()) == set(drawn.present())
    if head == "beta":
        previous = torch.linspace(0.2, 1.4, 6)
        tau, actions = head_draw(controller.head(hidden), previous, torch.Generator().manual_seed(3), controller.config)
        kept = actions.gate == 0
        assert kept.any() and torch.equal(tau[kept], previous[kept])


def test_a_controller_without_a_plan_runs_on_hf_only():
    """A controller that implements only ``choose`` (tests/test_plugins.py's kind) is refused by vLLM in one line
    naming the missing plan; the base class has no plan of its own."""
    from thermorl.engines.vllm import check_supported, sampling_plan
    from thermorl.errors import ConfigError
    from thermorl.temperature.base import TemperatureActions, TemperatureController, full

    class OnlyChoose(TemperatureController):
        name = "only_choose"

        def __init__(self, config, env):
            pass

        def choose(self, ctx):
            return full(ctx, 1.0), TemperatureActions()

    CONTROLLERS.register("only_choose", None)(OnlyChoose)
    try:
        config = load_config(None, ["temperature.controller=only_choose", "rollout.engine=vllm"])
        from thermorl.engines import vllm as vllm_module

        if vllm_module.vllm_available():
            with pytest.raises(ConfigError, match="declares no sampling plan"):
                check_supported(config)
        with pytest.raises(ConfigError, match="declares no sampling plan"):
            sampling_plan(OnlyChoose(None, None))
    finally:
        del CONTROLLERS["only_choose"]


def test_engines_dispatch_on_plans_not_names_and_stay_small():
    """No engine module names a controller or compares controller names, and none is over 400 lines."""
    names = [name for name in CONTROLLERS]
    for path in sorted((SRC / "engines").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 400, (path.name, len(text.splitlines()))
        assert "controller.name ==" not in text and "getattr(controller" not in text, path.name
        for name in names:
            assert f'"{name}"' not in text, (path.name, name)
