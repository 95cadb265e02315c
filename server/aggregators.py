"""The aggregator inside the LoRA-XS layer: any of Flower's own strategies, optionally wrapped in
Flower's differential-privacy wrapper, built from the run config.

Why every one of them is exact for LoRA-XS: the r x r matrices live in a linear space and
delta W = s * B R A is linear in R (B, A frozen and shared), so any update rule that combines the
clients' R linearly -- a weighted mean (FedAvg, FedProx), server momentum (FedAvgM), or a
per-entry step (FedAdam / FedYogi / FedAdagrad scale each entry of the mean delta) -- gives the
delta W that the same rule applied to delta W = s B R A would give for FedAvg / FedAvgM / FedProx
(tests/test_aggregators.py checks FedAvgM on R against the same update computed on delta W).
The adaptive ones are per-entry in R's coordinates (not rotation invariant), so they are the
same optimizer run in R's coordinates. The robust ones (FedMedian, FedTrimmedAvg, Krum) pick or
trim per entry / per client in R: the result is still some client's delta W or a per-entry
statistic of them, never a mismatch of two factors as with plain LoRA's separate A and B.

The layer (server/strategy.py) samples the nodes, checks every reply, and hands this aggregator
only good, fp32 replies: Flower's DP wrappers skip a whole round when any reply carries an
error, so no error ever reaches them, and their `num_sampled_clients` is set to the number of
good replies before each aggregation (the noise stays calibrated to the clients averaged).
"""

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod

from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS, CONFIG
from shared.federation.run_config import STRATEGIES, FederationConfig

# What the layer leaves to the aggregator: it sees exactly the sampled nodes and good replies.
_AS_GIVEN = dict(
    fraction_train=1.0,
    fraction_evaluate=0.0,
    min_train_nodes=1,
    min_evaluate_nodes=0,
    min_available_nodes=1,
    weighted_by_key="num-examples",
    arrayrecord_key=ARRAYS,
    configrecord_key=CONFIG,
)


def make_aggregator(config: FederationConfig) -> Strategy:
    """`strategy` (+ its parameters), wrapped in Flower's DP wrapper when `dp` is not "none"."""
    name = config.strategy
    if name == "fedavg":
        inner = FedAvg(**_AS_GIVEN)
    elif name == "fedavgm":
        inner = FedAvgM(**_AS_GIVEN, server_learning_rate=config.server_lr, server_momentum=config.server_momentum)
    elif name in ("fedadam", "fedyogi"):
        kind = FedAdam if name == "fedadam" else FedYogi
        inner = kind(
            **_AS_GIVEN,
            eta=config.server_lr,
            eta_l=config.lr,
            beta_1=config.beta_1,
            beta_2=config.beta_2,
            tau=config.tau,
        )
    elif name == "fedadagrad":
        inner = FedAdagrad(**_AS_GIVEN, eta=config.server_lr, eta_l=config.lr, tau=config.tau)
    elif name == "fedprox":
        inner = FedProx(**_AS_GIVEN, proximal_mu=config.proximal_mu)
    elif name == "fedmedian":
        inner = FedMedian(**_AS_GIVEN)
    elif name == "fedtrimmedavg":
        inner = FedTrimmedAvg(**_AS_GIVEN, beta=config.trimmed_beta)
    elif name == "krum":
        inner = Krum(**_AS_GIVEN, num_malicious_nodes=config.krum_malicious)
    else:  # FederationConfig checks the choice; this is the guard for a new name
        raise LoraXSError(f"strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    if config.dp == "none":
        return inner
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if config.dp == "server-fixed"
        else DifferentialPrivacyClientSideFixedClipping
    )
    sampled = max(1, int(config.num_clients * config.fraction_train), config.min_train_nodes)
    return wrapper(
        inner,
        config.dp_noise_multiplier,
        config.dp_clipping_norm,
        sampled,
        accountant=_accountant(config) if name == "fedavg" and config.dp_noise_multiplier > 0 else None,
    )


def _accountant(config: FederationConfig):
    """Flower's RDP accountant (needs `dp-accounting`): no amplification by sampling is claimed
    (Flower's fixed-clipping accounting supports only that), so epsilon is an upper bound."""
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(
        PrivacyConfig(
            target_delta=config.dp_delta,
            population_size=config.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def dp_wrapper(aggregator: Strategy):
    """The DP wrapper, when the aggregator is one."""
    if isinstance(aggregator, (DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping)):
        return aggregator
    return None


def privacy_spent(aggregator: Strategy) -> dict | None:
    """epsilon at delta so far (Flower's accountant), or None where none applies."""
    wrapper = dp_wrapper(aggregator)
    spent = wrapper.privacy_spent() if wrapper is not None else None
    if spent is None:
        return None
    return {"epsilon": float(spent.epsilon), "delta": float(spent.delta), "releases": int(spent.num_releases)}


# --- checkpoint: the aggregator's own state (server-optimizer moments, momentum, accountant) ---
_ARRAY_DICTS = ("current_arrays", "m_t", "v_t")  # FedOpt family: name -> {key: ndarray} or None


def aggregator_state(aggregator: Strategy) -> dict:
    """JSON-able state of the aggregator (exact: float32 values survive the float round trip)."""
    wrapper = dp_wrapper(aggregator)
    inner = wrapper.strategy if wrapper is not None else aggregator
    state: dict = {}
    if isinstance(inner, FedAvgM):
        current = inner.current_arrays
        state["current_arrays"] = None if current is None else _encode({k: v.numpy() for k, v in current.items()})
        momentum = inner.momentum_vector
        state["momentum_vector"] = None if momentum is None else [_encode_array(v) for v in momentum]
    elif hasattr(inner, "m_t"):
        for name in _ARRAY_DICTS:
            value = getattr(inner, name, None)
            state[name] = None if value is None else _encode(value)
    if wrapper is not None and wrapper.accountant is not None:
        state["accountant"] = wrapper.accountant.state_dict()
    return state


def restore_aggregator(aggregator: Strategy, state: dict) -> None:
    wrapper = dp_wrapper(aggregator)
    inner = wrapper.strategy if wrapper is not None else aggregator
    if isinstance(inner, FedAvgM):
        current = state.get("current_arrays")
        inner.current_arrays = (
            None if current is None else ArrayRecord({k: Array(v) for k, v in _decode(current).items()})
        )
        momentum = state.get("momentum_vector")
        inner.momentum_vector = None if momentum is None else [_decode_array(v) for v in momentum]
    elif hasattr(inner, "m_t"):
        for name in _ARRAY_DICTS:
            value = state.get(name)
            setattr(inner, name, None if value is None else _decode(value))
    if wrapper is not None and wrapper.accountant is not None and "accountant" in state:
        wrapper.accountant.load_state_dict(state["accountant"])


def _encode_array(value) -> dict:
    value = np.asarray(value)
    return {"dtype": str(value.dtype), "shape": list(value.shape), "values": value.ravel().tolist()}


def _decode_array(encoded: dict) -> np.ndarray:
    return np.asarray(encoded["values"], dtype=encoded["dtype"]).reshape(encoded["shape"])


def _encode(arrays: dict) -> dict:
    return {k: _encode_array(v) for k, v in arrays.items()}


def _decode(encoded: dict) -> dict:
    return {k: _decode_array(v) for k, v in encoded.items()}
