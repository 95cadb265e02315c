"""(slow) Real loopback deployments over TLS with SuperNode auth, two rounds each: with
encrypt-updates (every update sealed to the ServerApp's key from server-key-file, opened, none
rejected; each node remembered the key that came with the factors), and with secure-aggregation
on three SuperNodes that allow it (signed server messages, sealed stage replies)."""

import json

import pytest

from deployment.local import DeploymentConfig, LocalDeployment
from server.sealed_updates import PUBLIC_KEY_FILE
from shared.artifacts.cache import STATE_FOLDER
from shared.crypto.sealing import ServerPrivateKey, load_public_key, save_private_key
from tests.helpers import REPO, assert_all_gone, deployment_run_config, write_reviews


def two_rounds_over_tls(
    model_dir: str, tmp_path, extra_settings: str, names=("alice", "bob"), secure_aggregation: bool = False
):
    """Two rounds on one SuperNode per name (TLS + auth) with `extra_settings`; (report, data folders)."""
    data_dirs = tuple(write_reviews(tmp_path / name, n=24) for name in names)
    out_dir = tmp_path / "server-out"
    config = DeploymentConfig(
        data_dirs=data_dirs, workdir=tmp_path / "w", tls=True, auth=True, secure_aggregation=secure_aggregation
    )
    settings = (
        deployment_run_config(model_dir, out_dir, "fresh,rotten").replace("num-clients=2", f"num-clients={len(names)}")
        + " "
        + extra_settings
    )
    with LocalDeployment(config) as deployment:
        deployment.wait_for_supernodes(timeout=60)
        done = deployment.run(REPO, settings, timeout=240)
        log = (config.workdir / "flwr-run.log").read_text()
        assert done.returncode == 0, log[-3000:]
        pids = deployment.alive_pids()
    assert_all_gone(pids)
    report = json.loads((out_dir / "report.json").read_text())
    assert [r["clients_trained"] for r in report["rounds"]] == [len(names)] * 2
    assert [r["rejected_updates"] for r in report["rounds"]] == [0, 0]
    return report, data_dirs, out_dir


@pytest.mark.slow
def test_two_sealed_rounds_over_tls_on_two_supernodes(tiny_bert_dir, tmp_path):
    key = ServerPrivateKey.generate()
    save_private_key(key, tmp_path / "server.key")
    _, data_dirs, out_dir = two_rounds_over_tls(
        tiny_bert_dir, tmp_path, f"encrypt-updates=true server-key-file='{tmp_path / 'server.key'}'"
    )
    assert load_public_key(out_dir / PUBLIC_KEY_FILE).raw == key.public_key.raw
    for data_dir in data_dirs:
        assert load_public_key(data_dir / STATE_FOLDER / "server_key.pub").raw == key.public_key.raw


@pytest.mark.slow
def test_secure_aggregation_rounds_over_tls_on_three_supernodes(tiny_bert_dir, tmp_path):
    """The SecAgg+ stages (keys, shares, masked deltas, unmasking) through a real SuperLink over
    TLS, on SuperNodes that allow it in their own node config (3: the least group size): every
    node summed in every round, nothing rejected, each node trusted the server's keys first."""
    report, data_dirs, out_dir = two_rounds_over_tls(
        tiny_bert_dir,
        tmp_path,
        "secure-aggregation=true secagg-timeout=120",
        names=("alice", "bob", "carol"),
        secure_aggregation=True,
    )
    for entry in report["rounds"]:
        secure = entry["secure_aggregation"]
        assert secure["summed"] == 3 and secure["stage_bytes_up"] > 0 and secure["blamed"] == {}
        assert 0 < secure["max_quantization_error"] < 1e-4
    server_keys = load_public_key(out_dir / PUBLIC_KEY_FILE)
    assert server_keys.signing is not None
    for data_dir in data_dirs:
        assert load_public_key(data_dir / STATE_FOLDER / "server_key.pub") == server_keys
