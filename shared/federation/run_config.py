"""Every setting of the federation: one dataclass whose defaults ARE `[tool.flwr.app.config]`.

`flwr run .` reads the pyproject table into `context.run_config`; `flower-simulation` starts
from the dataclass defaults and overrides a few fields from its flags. A test checks that the
table and the defaults agree, so both ways run the same federation.
"""

from dataclasses import asdict, dataclass, fields, replace

from shared.base_models import DEFAULT_MODEL
from shared.crypto.secagg.params import MIN_GROUP
from shared.data.batches import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH
from shared.data.partition import PARTITIONS
from shared.data.text_splits import TASKS
from shared.errors import LoraXSError
from shared.loraxs.config import BASIS_DTYPES, LoraXSConfig
from shared.personal_training import PersonalTrainingConfig
from shared.training import TrainConfig

PERSONALIZE = ("none", "finetune")
SCENARIOS = ("none", "concept-shift")
UPDATE_DTYPES = ("fp32", "fp16")
BASIS_DELIVERIES = ("derive", "ship")  # server/basis_delivery.py
HPKE_SUITES = ("x25519", "mlkem768-x25519")  # shared/crypto/sealing.py: classic, post-quantum hybrid
STRATEGIES = (
    "fedavg",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedprox",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
)  # Flower's own strategies (server/aggregators.py)
MEAN_BASED = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox")  # need only the mean
DP_MODES = ("none", "server-fixed", "client-fixed")  # Flower's fixed-clipping DP wrappers
MIXED_RANK_AGGREGATION = ("zero-pad", "per-entry")  # shared/loraxs/mixed_rank.py
MALICIOUS_ATTACKS = ("flip-scale", "flip", "scale")  # simulations/malicious_clients.py
CHOICES = {
    "personalize": PERSONALIZE,
    "scenario": SCENARIOS,
    "update_dtype": UPDATE_DTYPES,
    "basis_delivery": BASIS_DELIVERIES,
    "basis_dtype": BASIS_DTYPES,
    "partition": PARTITIONS,
    "task": TASKS,
    "hpke_suite": HPKE_SUITES,
    "strategy": STRATEGIES,
    "dp": DP_MODES,
    "mixed_rank_aggregation": MIXED_RANK_AGGREGATION,
    "malicious_attack": MALICIOUS_ATTACKS,
}  # field -> allowed values


@dataclass(frozen=True)
class FederationConfig:
    """One federated LoRA-XS run (run-config keys are the field names in kebab-case).

    num_clients:          SuperNodes the server waits for; in simulation also the number of
                          partitions the dataset is cut into (must equal the federation's size).
    num_server_rounds:    federated rounds.
    fraction_train:       share of the clients sampled to train in each round, in (0, 1].
    fraction_evaluate:    share sampled for a federated evaluation after each round (0 = none;
                          the global accuracy per round comes from the server's held-out set).
    final_eval_fraction:  share of the clients that evaluate the final global adapter (and their
                          personal one) on their own held-out split after the last round.
    model, task:          base model id or folder; "seq-cls" or "causal-lm".
    dataset:              a dataset name or folder partitioned across simulated clients, also the
                          source of the server's held-out set; "" when every node brings its own
                          data (deployment), then `labels` must name the classes.
    labels:               comma-separated class names ("" = the dataset's).
    partition:            natural | iid | dirichlet; dirichlet_alpha for dirichlet.
    rank, lora_alpha:     LoRA-XS rank r and alpha (scale = alpha / r).
    local_epochs, lr, head_lr, batch_size, max_length: local training on each client (lr for
                          the r x r matrices, head_lr for the classification head).
    personalize:          "finetune": every client also keeps a personal adapter (the global
                          one trained by client.run's recipe with a budget of `personal_steps`
                          steps, kept only where it beats the global one on validation), never sent.
    scenario:             "concept-shift": a seeded `shift_fraction` of the clients flip labels.
    update_dtype:         fp32 | fp16, the precision of the adapter on the wire (both ways).
    basis_delivery:       "derive": a node's first message carries the recipe of the factors (model,
                          rank, targets, method, dtype) and their fingerprint; the node derives
                          them from its base weights (reproducible SVD) and checks the
                          fingerprint; one that cannot answers "unknown-fingerprint" and is sent
                          the factors in the same round. "ship": the factors ride along instead.
    basis_dtype:          fp32 | fp16 | bf16: the factors' values are rounded to this precision
                          (and shipped in it); everyone, the server included, uses the rounded ones.
    eval_max_examples:    cap on the server's held-out set (a seeded sample).
    out_dir:              where the global adapter, basis and report go ("" = runs/<timestamp>).
    min_train_nodes:      good updates a round needs; with fewer it is skipped (logged) and the
                          global adapter stays as it was.
    round_timeout:        seconds the server waits for the replies of one round's phase.
    max_client_examples:  cap on the weight ("num-examples") of one client's update; in
                          simulation also the size of the client's partition.
    fail_rate:            simulation only: a seeded share of client messages crash, time out or
                          answer with garbage (simulations/failing_clients.py).
    resume_from:          a run folder whose checkpoint the run continues ("" = a new run); the
                          config must equal the checkpoint's but for num-server-rounds.
    encrypt_updates:      seal every train update to the ServerApp's HPKE key (docs/security.md).
    server_key_file:      the ServerApp's private key file for encrypt-updates (created when
                          missing, with FILE.pub for clients to pin); "" = a fresh key per run.
    hpke_suite:           "x25519" (DHKEM-X25519, 48 B per update) or "mlkem768-x25519" (the
                          post-quantum hybrid, 1,136 B per update) for a new server key.
    secure_aggregation:   the server learns only the weighted sum of the updates (SecAgg+ style,
                          server/secure_rounds.py; docs/security.md). Weights are capped at
                          `max_client_examples`; every round needs at least 3 sampled clients.
    secagg_timeout:       seconds the server waits for the replies of each secure-aggregation
                          stage after training (a silent client is dropped, the round goes on).
    strategy:             the aggregator inside the LoRA-XS layer, one of Flower's strategies:
                          fedavg | fedavgm | fedadam | fedyogi | fedadagrad | fedprox | fedmedian |
                          fedtrimmedavg | krum (server/aggregators.py; docs/federation.md).
    server_lr, server_momentum: FedAvgM's server learning rate and momentum; server_lr is also
                          the FedAdam / FedYogi / FedAdagrad step eta.
    beta_1, beta_2, tau:  FedAdam / FedYogi moments and their epsilon (FedAdagrad: tau).
    proximal_mu:          FedProx's proximal term mu / 2 * ||R - R_global||^2 in local training.
    trimmed_beta, krum_malicious: FedTrimmedAvg's trimmed share per side; Krum's assumed
                          number of malicious clients.
    dp:                   none | server-fixed | client-fixed: Flower's fixed-clipping DP wrapper
                          around the aggregator (client-fixed clips on the device with Flower's
                          fixedclipping_mod); updates are then weighted equally, as DP-FedAvg assumes.
    dp_noise_multiplier, dp_clipping_norm: z and C of the Gaussian mechanism (noise std z C / n
                          on the mean of the n good updates); dp_delta: the delta at which the
                          privacy budget epsilon is reported (Flower's RDP accountant, fedavg only).
    client_ranks:         mixed ranks: comma-separated ranks <= rank, partition p trains at
                          ranks[p mod len] ("" = every client at `rank`); a node config `rank`
                          overrides it. A device at r' trains the top-left r' x r' block of
                          each R with the federation's scale alpha / rank.
    mixed_rank_aggregation: zero-pad (exact mean of the clients' delta W) | per-entry (each
                          entry over the clients holding it; fedavg only).
    malicious_fraction:   simulation only: a seeded share of the clients poison every update
                          (global + k * delta, k from malicious_attack: flip-scale -10, flip -1,
                          scale 10; simulations/malicious_clients.py).
    secagg_clipping_range: C: each client's delta x is sent as x * w / max-client-examples, which
                          must lie in [-C, C] (a client whose delta does not fit sits the round out).
    """

    num_clients: int = 100
    num_server_rounds: int = 10
    fraction_train: float = 0.1
    fraction_evaluate: float = 0.0
    final_eval_fraction: float = 0.3
    model: str = DEFAULT_MODEL
    task: str = "seq-cls"
    dataset: str = "rotten-tomatoes"
    labels: str = ""
    partition: str = "natural"
    dirichlet_alpha: float = 0.5
    rank: int = LoraXSConfig.rank
    lora_alpha: float = LoraXSConfig.alpha
    local_epochs: float = TrainConfig.epochs
    # Overrides TrainConfig.lr (2e-3, local personalization from an adapter): a client takes only
    # a few steps per round on a small partition, and 64 steps at 2e-3 do not leave the majority
    # class (benchmarks/results/by_hand.md, learning rates), so the federation steps larger, with
    # its own head_lr. lr and head_lr (0.01, down from 0.05: the head's jumps made the rounds swing)
    # come from benchmarks/studies/federation_sweep.py with the strategy below (docs/federation.md).
    lr: float = 0.02
    head_lr: float = 0.01
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    personalize: str = "none"
    personal_steps: int = 10
    scenario: str = "none"
    shift_fraction: float = 0.2
    update_dtype: str = "fp32"
    basis_delivery: str = "derive"
    basis_dtype: str = "fp32"
    eval_max_examples: int = 500
    seed: int = 0
    out_dir: str = ""
    min_train_nodes: int = 1
    round_timeout: float = 3600.0
    max_client_examples: int = 10_000
    fail_rate: float = 0.0
    resume_from: str = ""
    encrypt_updates: bool = False
    server_key_file: str = ""
    hpke_suite: str = "x25519"
    secure_aggregation: bool = False
    secagg_timeout: float = 120.0
    secagg_clipping_range: float = 8.0
    # The default strategy and rates come from benchmarks/studies/federation_sweep.py (docs/federation.md):
    # FedAvgM with a damped server step ends higher and never drops > 3 points after round 4.
    strategy: str = "fedavgm"
    server_lr: float = 0.5
    server_momentum: float = 0.5
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    proximal_mu: float = 0.0
    trimmed_beta: float = 0.2
    krum_malicious: int = 0
    dp: str = "none"
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    client_ranks: str = ""
    mixed_rank_aggregation: str = "zero-pad"
    malicious_fraction: float = 0.0
    malicious_attack: str = "flip-scale"

    def __post_init__(self):
        for name, choices in CHOICES.items():
            _check_choice(_key(name), getattr(self, name), choices)
        if not self.model.strip():
            raise LoraXSError("model must name a model id or folder, not an empty string")
        if self.labels.strip() and not self.label_names():  # ",," names no class: not "the dataset's"
            raise LoraXSError(f"labels must be comma-separated class names, got {self.labels!r}")
        if self.num_clients < 1:
            raise LoraXSError(f"num-clients must be at least 1, got {self.num_clients}")
        if self.num_server_rounds < 1:
            raise LoraXSError(f"num-server-rounds must be at least 1, got {self.num_server_rounds}")
        if not 0.0 < self.fraction_train <= 1.0:
            raise LoraXSError(f"the train fraction must be in (0, 1], got {self.fraction_train}")
        for name in ("fraction_evaluate", "final_eval_fraction", "shift_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LoraXSError(f"{_key(name)} must be in [0, 1], got {getattr(self, name)}")
        for name in ("batch_size", "max_length", "eval_max_examples", "personal_steps"):
            if getattr(self, name) < 1:
                raise LoraXSError(f"{_key(name)} must be at least 1, got {getattr(self, name)}")
        if self.min_train_nodes < 1 or self.max_client_examples < 1:
            raise LoraXSError("min-train-nodes and max-client-examples must be at least 1")
        if not 0 < self.round_timeout < float("inf"):
            raise LoraXSError(f"round-timeout must be a positive number of seconds, got {self.round_timeout}")
        if self.secure_aggregation:
            self._check_secure_aggregation()
        self._check_aggregator()
        if not 0.0 <= self.malicious_fraction <= 1.0:
            raise LoraXSError(f"malicious-fraction must be in [0, 1], got {self.malicious_fraction}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise LoraXSError(f"fail-rate must be in [0, 1], got {self.fail_rate}")
        if not self.dirichlet_alpha > 0:
            raise LoraXSError(f"the Dirichlet alpha must be > 0, got {self.dirichlet_alpha}")
        if not self.local_epochs > 0:
            raise LoraXSError(f"local-epochs must be > 0, got {self.local_epochs}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise LoraXSError("learning rates (lr, head-lr) must be > 0")
        if self.scenario == "concept-shift" and self.task != "seq-cls":
            raise LoraXSError("the concept-shift scenario flips class labels: it needs task seq-cls")
        if not self.dataset and self.task == "seq-cls" and not self.label_names():
            raise LoraXSError("without a dataset the server needs the class names: set labels")
        self.lora_config()  # rank / alpha checks

    def _check_aggregator(self) -> None:
        if not (
            self.server_lr > 0
            and 0 <= self.server_momentum < 1
            and 0 <= self.beta_1 < 1
            and 0 <= self.beta_2 < 1
            and self.tau > 0
            and self.proximal_mu >= 0
        ):
            raise LoraXSError(
                "server-lr and tau must be > 0, server-momentum / beta-1 / beta-2 in [0, 1), proximal-mu >= 0"
            )
        if not 0 <= self.trimmed_beta < 0.5 or self.krum_malicious < 0:
            raise LoraXSError("trimmed-beta must be in [0, 0.5) and krum-malicious >= 0")
        if self.dp != "none":
            if not (self.dp_noise_multiplier >= 0 and self.dp_clipping_norm > 0 and 0 < self.dp_delta < 1):
                raise LoraXSError("dp needs dp-noise-multiplier >= 0, dp-clipping-norm > 0, dp-delta in (0, 1)")
            if self.secure_aggregation or (self.dp == "client-fixed" and self.encrypt_updates):
                raise LoraXSError(
                    f"dp {self.dp} cannot be combined with "
                    f"{'secure-aggregation' if self.secure_aggregation else 'encrypt-updates'}"
                )
        try:
            ranks = self.client_rank_list()
        except ValueError:
            raise LoraXSError(f"client-ranks must be comma-separated integers, got {self.client_ranks!r}") from None
        if self.client_ranks.strip() and not ranks:  # ",," names no rank: not "no mixed ranks"
            raise LoraXSError(f"client-ranks must be comma-separated integers, got {self.client_ranks!r}")
        if any(not 1 <= r <= self.rank for r in ranks):
            raise LoraXSError(f"client-ranks must lie in [1, rank {self.rank}], got {self.client_ranks!r}")
        if self.mixed_rank_aggregation == "per-entry" and (self.strategy not in MEAN_BASED or self.dp != "none"):
            raise LoraXSError(
                f"mixed-rank-aggregation per-entry needs a mean-based strategy ({', '.join(MEAN_BASED)}) without dp"
            )
        if self.secure_aggregation and self.strategy not in MEAN_BASED:
            raise LoraXSError(
                f"secure aggregation reveals only the mean: strategy {self.strategy} needs each "
                f"update (use one of {', '.join(MEAN_BASED)})"
            )

    def _check_secure_aggregation(self) -> None:
        if (
            self.num_clients < MIN_GROUP
            or max(int(self.num_clients * self.fraction_train), self.min_train_nodes) < MIN_GROUP
        ):
            raise LoraXSError(
                f"secure aggregation needs at least {MIN_GROUP} clients per round "
                "(num-clients x fraction-train, or min-train-nodes): with 2, each client "
                "could work out the other's update from the global change"
            )
        if not 0 < self.secagg_timeout < float("inf"):
            raise LoraXSError(f"secagg-timeout must be a positive number of seconds, got {self.secagg_timeout}")
        if not 0 < self.secagg_clipping_range < 1e6:
            raise LoraXSError(f"secagg-clipping-range must be in (0, 1e6), got {self.secagg_clipping_range}")
        if self.max_client_examples * self.num_clients >= 2**32:
            raise LoraXSError(
                "secure aggregation sums weights in 32 bits: max-client-examples x num-clients must stay below 2^32"
            )

    @classmethod
    def from_run_config(cls, run_config: dict) -> "FederationConfig":
        """From a Flower run config (kebab-case keys); unknown keys are an error."""
        known = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise LoraXSError(f"unknown run-config key(s): {', '.join(unknown)}")
        values = {}
        for key, value in run_config.items():
            field = known[key]
            values[field.name] = _coerce(key, value, type(getattr(cls, field.name)))
        return cls(**values)

    def to_run_config(self) -> dict:
        return {_key(name): value for name, value in asdict(self).items()}

    def with_overrides(self, **changes) -> "FederationConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def label_names(self) -> list[str] | None:
        names = [n.strip() for n in self.labels.split(",") if n.strip()]
        return names or None

    def client_rank_list(self) -> list[int]:
        return [int(r) for r in self.client_ranks.split(",") if r.strip()]

    def node_rank(self, node_config: dict) -> int:
        """The rank this node trains at: node config `rank`, else client-ranks by partition."""
        if "rank" in node_config:
            rank = int(node_config["rank"])
            if not 1 <= rank <= self.rank:
                raise LoraXSError(f"node config rank {rank} must lie in [1, the federation's rank {self.rank}]")
            return rank
        ranks = self.client_rank_list()
        return ranks[int(node_config.get("partition-id", 0)) % len(ranks)] if ranks else self.rank

    def node_lora_config(self, node_rank: int) -> LoraXSConfig:
        """The federation's adapter at a smaller rank, with the federation's scale alpha / rank."""
        full = self.lora_config()
        return (
            full if node_rank == full.rank else replace(full, rank=node_rank, alpha=full.alpha * node_rank / full.rank)
        )

    def lora_config(self) -> LoraXSConfig:
        return LoraXSConfig(rank=self.rank, alpha=self.lora_alpha, basis_dtype=self.basis_dtype)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.local_epochs,
            lr=self.lr,
            head_lr=self.head_lr,
            proximal_mu=self.proximal_mu if self.strategy == "fedprox" else 0.0,
        )

    def personal_training_config(self, seed: int) -> PersonalTrainingConfig:
        """The small-folder recipe of `client.run`, from the global adapter: `personal_steps` is
        its step budget, and the federation's token length and learning rates hold (the head
        starts from the global one, not from a closed-form fit, unless that fit is better)."""
        return PersonalTrainingConfig(
            lr=self.lr,
            head_lr=self.head_lr,
            batch_size=self.batch_size,
            max_length=self.max_length,
            step_budget=self.personal_steps,
            seed=seed,
        )


def _key(name: str) -> str:
    return name.replace("_", "-")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LoraXSError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _coerce(key: str, value, kind: type):
    """Flower run-config values are str/int/float/bool; accept ints for floats, nothing looser."""
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is bool and (isinstance(value, bool) or value in ("true", "false")):
        return value in (True, "true")
    if kind in (int, float) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise LoraXSError(f"run-config {key} must be a {kind.__name__}, got {value!r}")
