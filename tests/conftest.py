import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)  # extra threads spin-wait on busy shared cores


def run_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run the real `thermorl` entry point in a subprocess (``timeout``: a guard for a hung run, generous
    because a shared, loaded machine can be 30x slower than an idle one)."""
    return subprocess.run(
        [sys.executable, "-m", "thermorl.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture(scope="session")
def tiny_policy():
    from thermorl.config import ModelConfig
    from thermorl.models import load_policy

    return load_policy(ModelConfig(path="builtin:random"), seed=0)


def _refuse_processes_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(what: str):
        def refused(*args, **kwargs):
            raise AssertionError(f"a test marked fast started {what}; unmark it (the fast tier is unit tests only)")

        return refused

    import multiprocessing.process

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("a worker process"))
    monkeypatch.setattr("thermorl.runtime.trainer.train", refuse("a training run"))


@pytest.fixture(autouse=True)
def _fast_test_stays_in_process(request, monkeypatch):
    """Tests marked ``fast`` (the unit tier, ``pytest -m fast``) start no process and no training run: each
    attempt fails the test, so the tier keeps its definition as tests are added to it."""
    if request.node.get_closest_marker("fast") is not None:
        _refuse_processes_and_runs(monkeypatch)


@pytest.fixture(scope="module", autouse=True)
def _fast_module_stays_in_process(request):
    """The same for a module whose selected tests are all fast (``-m fast``), from before its module fixtures."""
    items = [item for item in request.session.items if item.module is request.module]
    if not items or any(item.get_closest_marker("fast") is None for item in items):
        yield
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        _refuse_processes_and_runs(monkeypatch)
        yield


# The fast tier (`pytest -m fast`): unit tests, no process, no training run, none over a few seconds. Every test
# of FAST_MODULES is in it but those of NOT_FAST (each starts processes or a run, or takes over 10 s); a module
# can also mark tests itself. The guards above fail a fast test that starts a process or a run.
FAST_MODULES = {
    "test_baselines.py", "test_builtin_model.py", "test_config.py", "test_decoding.py", "test_dynamic_sampling.py",
    "test_grpo.py", "test_introspective.py", "test_logprobs.py", "test_math_data.py", "test_models.py",
    "test_objective.py", "test_plugins.py", "test_properties.py", "test_reward_guard.py", "test_rewards.py",
    "test_rollout.py", "test_rollout_correction.py", "test_runtime_faults.py", "test_sampling_plans.py",
    "test_security.py", "test_tampo.py", "test_tasks.py",
}
NOT_FAST = {  # CLI processes or whole runs, reward worker processes, a child-process measurement, or > 10 s loaded
    "test_a_call_stuck_in_c_is_killed_scored_zero_and_counted",
    "test_a_controller_defined_outside_thermorl_trains_through_the_cli",
    "test_a_lora_run_resumes_from_its_adapter_checkpoint_exactly",
    "test_a_run_with_dynamic_sampling_trains_on_groups_whose_rewards_differ",
    "test_an_engine_registers_with_its_config_section",
    "test_cli_runs_sample_at_the_temperatures_each_rule_prescribes",
    "test_cli_tampo_run_logs_its_distribution_and_draws_heatmap",
    "test_cli_trains_reports_and_generates",
    "test_controller_trains_end_to_end_through_the_cli",
    "test_custom_reward_receives_the_dataset_columns",
    "test_errors_score_zero_and_fail_fast_stops",
    "test_functions_get_completion_ids_columns_and_the_trainer_state",
    "test_math500_reference_solutions_score_right_and_shuffled_answers_wrong",
    "test_nan_temperature_and_nan_loss_steps_are_skipped_and_counted",
    "test_none_from_one_function_leaves_the_others_reward",
    "test_rescoring_peak_memory_is_below_two_log_softmax_passes",
    "test_reward_function_failures_score_zero_and_are_counted",
    "test_shipped_checkpoint_scores_in_the_useful_range",
    "test_temperatures_are_clamped_to_the_configured_range",
    "test_the_run_clamp_reaches_training_the_report_and_benchmark_evaluation",
    "test_the_trained_reward_is_the_weighted_sum",
    "test_too_many_bad_steps_in_a_row_stop_with_a_valid_checkpoint",
    "test_trl_accuracy_reward_runs_unchanged_on_conversational_completions",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        in_tier = item.path.name in FAST_MODULES and item.originalname not in NOT_FAST
        if in_tier and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
