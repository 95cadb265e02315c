"""A real Flower deployment on loopback: certificates, connection config, SuperNode command, and
(slow) a SuperLink + 2 SuperNodes running 2 federated rounds with the tiny BERT.

Every test that starts processes stops them and checks that none is left.
"""

import signal
import sys
import time
from pathlib import Path

import pytest
import tomli
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.flower_config import parse_superlink_connection
from flwr.common.config import parse_config_args

from client.node_state import FEDERATION_PERSONAL_ADAPTER
from deployment.certificates import make_certificates
from deployment.connection import write_flwr_config
from deployment.local import DeploymentConfig, LocalDeployment
from deployment.process_tree import ProcessTree, flower_env
from deployment.supernode import SuperNodeConfig, quoted_config_value, start_supernode, supernode_command
from shared.artifacts.adapter_file import load_adapter
from shared.artifacts.basis_file import load_basis
from shared.artifacts.cache import STATE_FOLDER
from shared.errors import LoraXSError
from tests.helpers import REPO, assert_all_gone, deployment_run_config, write_reviews

# -- fast: files and commands ---------------------------------------------------------------


def test_certificates_for_loopback_tls_and_supernode_auth(tmp_path):
    paths = make_certificates(tmp_path / "certs", num_supernodes=2)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key_path in paths.supernode_keys:
        private = load_ssh_private_key(key_path.read_bytes(), password=None)
        public = load_ssh_public_key(Path(f"{key_path}.pub").read_bytes())
        assert isinstance(private.curve, ec.SECP384R1)
        assert private.public_key().public_numbers() == public.public_numbers()
        assert Path(f"{key_path}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_certificates_never_overwrite_without_force(tmp_path):
    paths = make_certificates(tmp_path, num_supernodes=1)
    before = paths.ca_cert.read_bytes()
    with pytest.raises(LoraXSError, match="already exists"):
        make_certificates(tmp_path, num_supernodes=1)
    assert paths.ca_cert.read_bytes() == before
    make_certificates(tmp_path, num_supernodes=1, force=True)
    assert paths.ca_cert.read_bytes() != before


def test_connection_config_is_what_flwr_reads(tmp_path):
    path = write_flwr_config(tmp_path, "loopback", "127.0.0.1:9093")
    conf = tomli.loads(path.read_text())
    assert conf["superlink"]["default"] == "loopback"
    conn = parse_superlink_connection(conf["superlink"]["loopback"], "loopback")
    assert (conn.address, conn.insecure, conn.root_certificates) == ("127.0.0.1:9093", True, None)

    write_flwr_config(tmp_path, "tls", "127.0.0.1:9093", root_certificates=tmp_path / "ca.crt")
    conn = parse_superlink_connection(tomli.loads(path.read_text())["superlink"]["tls"], "tls")
    assert (conn.insecure, conn.root_certificates) == (False, str(tmp_path / "ca.crt"))


@pytest.mark.parametrize("path", ["/data/alice", "/data/my files/alice", "/data/o'brien", "C:\\data\\alice", "/d/a=b"])
def test_node_config_paths_survive_flowers_parser(path):
    assert parse_config_args([f"data-dir={quoted_config_value(path)}"]) == {"data-dir": path}


def test_supernode_command(tmp_path):
    data = write_reviews(tmp_path / "my data")
    (tmp_path / "ca.crt").write_text("x")
    config = SuperNodeConfig(superlink="127.0.0.1:9092", data_dir=data, root_certificates=tmp_path / "ca.crt")
    command = supernode_command(config, runtime_port=40001)
    assert Path(command[0]).name == "flower-supernode" and Path(command[0]).is_file()
    node_config = command[command.index("--node-config") + 1]
    assert parse_config_args([node_config]) == {"data-dir": str(data)}
    assert command[command.index("--port") + 1] == "40001"
    assert command[command.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert "--insecure" not in command
    insecure = supernode_command(SuperNodeConfig("127.0.0.1:9092", data, insecure=True), 40002)
    assert "--insecure" in insecure and "--root-certificates" not in insecure


def test_deployment_rejects_bad_data_before_starting_anything(tmp_path):
    config = DeploymentConfig(data_dirs=(tmp_path / "missing",), workdir=tmp_path / "w")
    with pytest.raises(LoraXSError, match="not found"), LocalDeployment(config):
        pass
    assert not (tmp_path / "w").exists()


def test_local_cli_checks_the_number_of_supernodes(tmp_path, capsys):
    from deployment.local import main

    assert main(["--supernodes", "3", "--data", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "--supernodes 3 but 2 --data folders" in capsys.readouterr().err


def test_a_flwr_command_that_does_not_answer_is_a_clear_error(tmp_path):
    """An overloaded SuperLink (75 SuperNodes starting on 2 cores) left `flwr supernode list`
    unanswered: a one-line LoraXSError, not a TimeoutExpired traceback."""
    deployment = LocalDeployment(DeploymentConfig(data_dirs=(tmp_path / "a",), workdir=tmp_path / "w"))
    (tmp_path / "w").mkdir()
    with pytest.raises(LoraXSError, match="flwr supernode list did not answer within 0 s"):
        deployment._flwr("supernode", "list", "loopback", timeout=0.01)


# -- slow: real processes -------------------------------------------------------------------


@pytest.mark.slow
def test_supernode_auth_refuses_an_unregistered_key_and_tls_an_insecure_node(tmp_path):
    data = write_reviews(tmp_path / "node")
    stranger = make_certificates(tmp_path / "stranger", num_supernodes=1).supernode_keys[0]
    config = DeploymentConfig(data_dirs=(data,), workdir=tmp_path / "w", tls=True, auth=True)
    started = []
    with LocalDeployment(config) as deployment:
        deployment.wait_for_supernodes(timeout=90)
        pids = deployment.alive_pids()
        ca = deployment.certificates.ca_cert
        intruder = start_supernode(
            SuperNodeConfig(deployment.address, data, root_certificates=ca, auth_key=stranger),
            log=tmp_path / "intruder.log",
            flwr_home=tmp_path / "intruder-home",
        )
        plain = start_supernode(
            SuperNodeConfig(deployment.address, data, insecure=True),
            log=tmp_path / "plain.log",
            flwr_home=tmp_path / "plain-home",
        )
        started += [intruder, plain]
        try:
            assert intruder.wait(timeout=60) not in (None, 0), (tmp_path / "intruder.log").read_text()[-2000:]
            # without TLS it never gets in (Flower 1.42 keeps retrying rather than exiting)
            assert deployment.online_supernodes() == 1
            assert plain.returncode is not None or "Connection attempt failed" in (tmp_path / "plain.log").read_text()
            pids |= intruder.alive_pids() | plain.alive_pids()
        finally:
            for process in started:
                process.stop()
    assert_all_gone(pids)


@pytest.mark.slow
def test_client_run_joins_as_supernode_and_stops_on_sigint(tmp_path):
    first, second = write_reviews(tmp_path / "first"), write_reviews(tmp_path / "second")
    with LocalDeployment(DeploymentConfig(data_dirs=(first,), workdir=tmp_path / "w")) as deployment:
        deployment.wait_for_supernodes(timeout=90)
        device = ProcessTree(
            [
                sys.executable,
                "-m",
                "client.run",
                "--data",
                str(second),
                "--superlink",
                deployment.address,
                "--insecure",
            ],
            flower_env(tmp_path / "device-home"),
            log=tmp_path / "device.log",
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 90
            while deployment.online_supernodes() < 2 and time.monotonic() < deadline:
                assert device.returncode is None, (tmp_path / "device.log").read_text()[-2000:]
                time.sleep(1)
            assert deployment.online_supernodes() == 2
            pids = device.alive_pids()
            assert len(pids) >= 3  # client.run, flower-supernode, its flower-superexec
            device.send_signal(signal.SIGINT)
            assert device.wait(timeout=30) == 0, (tmp_path / "device.log").read_text()[-2000:]
            time.sleep(1)
            assert_all_gone(pids)
        finally:
            device.stop()
        pids = deployment.alive_pids()
    assert_all_gone(pids)


@pytest.mark.slow
@pytest.mark.parametrize("secure", [False, True], ids=["insecure", "tls-and-auth"])
def test_two_rounds_on_two_supernodes_leave_global_and_personal_adapters(tiny_bert_dir, tmp_path, secure):
    data_dirs = (write_reviews(tmp_path / "alice", n=24), write_reviews(tmp_path / "bob", n=24))
    out_dir = tmp_path / "server-out"
    config = DeploymentConfig(data_dirs=data_dirs, workdir=tmp_path / "w", tls=secure, auth=secure)
    with LocalDeployment(config) as deployment:
        deployment.wait_for_supernodes(timeout=60)
        done = deployment.run(REPO, deployment_run_config(tiny_bert_dir, out_dir, "fresh,rotten"), timeout=150)
        log = (config.workdir / "flwr-run.log").read_text()
        assert done.returncode == 0, log[-3000:]
        pids = deployment.alive_pids()
    assert_all_gone(pids)

    _, global_meta = load_adapter(out_dir / "global_adapter.safetensors")
    assert global_meta.extra["kind"] == "global" and global_meta.extra["round"] == "2"
    assert load_basis(out_dir / "basis.safetensors")[0].fingerprint == global_meta.basis_fingerprint
    for data_dir in data_dirs:
        _, meta = load_adapter(data_dir / STATE_FOLDER / FEDERATION_PERSONAL_ADAPTER)
        assert meta.extra["kind"] == "personal" and meta.labels == ("fresh", "rotten") and meta.rank == 4
        assert meta.basis_fingerprint == global_meta.basis_fingerprint
        assert (data_dir / STATE_FOLDER / "basis" / f"{meta.basis_fingerprint}.safetensors").is_file()
