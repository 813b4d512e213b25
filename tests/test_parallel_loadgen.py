"""main.py end to end with more than one engine: data parallel, tensor parallel, both, and two SUT nodes.

Each LoadGen run is its own process on CPU. The SUT-node runs are LoadGen over the network
(`--sut-nodes`, LoadGen's ConstructQDL) against two node processes on 127.0.0.1 (one engine node,
one reference node: the same greedy tokens either way). Every run must answer each sample exactly
once with the tokens of a single-engine run; TEST06 must pass for Server through the nodes.
"""

from __future__ import annotations

import shutil

import pytest

from parallel_fixtures import SMALL_ENGINE_FLAGS, start_node, stop_node
from loadgen_fixtures import (REPO, SMALL_USER_CONF, finish, read_accuracy_log, run_main, start_main, tokens,
                              write_dataset)
from test_loadgen_runs import assert_well_formed
from mlperf_llama2.report.run_info import read_run_info

MAX_NEW = 8
pytestmark = pytest.mark.slow  # a dozen CPU processes, 4-5 minutes on 2 shared cores


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("dist_loadgen")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    (root / "user.conf").write_text(SMALL_USER_CONF)
    (root / "audit").mkdir()
    shutil.copy(REPO / "compliance" / "TEST06" / "audit.config", root / "audit")
    return root


@pytest.fixture(scope="module")
def nodes(tiny_model_dir):
    started = [start_node(tiny_model_dir, "--backend", "engine", *SMALL_ENGINE_FLAGS),
               start_node(tiny_model_dir, "--backend", "reference", "--scenario", "Server")]
    yield [url for _, url in started]
    codes = [stop_node(proc) for proc, _ in started]
    assert codes == [0, 0]  # SIGTERM shuts a node down cleanly


@pytest.fixture(scope="module")
def runs(workdir, tiny_model_dir, nodes):
    def args(out, *extra):
        return ["--dataset-path", workdir / "data.pkl", "--user-conf", workdir / "user.conf", "--max-new-tokens",
                MAX_NEW, "--output-log-dir", out, "--no-progress", "--accuracy", *extra]

    model = ["--model-path", tiny_model_dir, "--backend", "engine", "--device", "cpu", *SMALL_ENGINE_FLAGS]
    sut_nodes = ["--sut-nodes", ",".join(nodes)]
    started = {
        "single": start_main(args("single", *model), workdir),
        "dp2": start_main(args("dp2", *model, "--data-parallel", 2), workdir),
        "tp2_server": start_main(args("tp2_server", *model, "--tensor-parallel", 2, "--scenario", "Server"), workdir),
        "dp2_tp2": start_main(args("dp2_tp2", *model, "--data-parallel", 2, "--tensor-parallel", 2), workdir),
        "nodes_offline": start_main(args("nodes_offline", *sut_nodes), workdir),
        "nodes_server": start_main(args("nodes_server", *sut_nodes, "--scenario", "Server"), workdir),
    }
    done = {name: finish(proc) for name, proc in started.items()}
    audit = ["--dataset-path", workdir / "data.pkl", "--user-conf", workdir / "user.conf", "--max-new-tokens", MAX_NEW,
             "--output-log-dir", "logs", "--no-progress", "--scenario", "Server", *sut_nodes]
    done["audit"] = run_main(audit, workdir / "audit")
    return done


def _outputs(runs, workdir, name, server=False):
    result = runs[name]
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    return assert_well_formed(read_accuracy_log(workdir / name), server=server)


def test_data_parallel_run_answers_each_sample_once_with_single_engine_tokens(runs, workdir):
    assert _outputs(runs, workdir, "dp2") == _outputs(runs, workdir, "single")
    assert "data parallel: requests per replica" in runs["dp2"].stderr


def test_tensor_parallel_server_run_matches_single_engine(runs, workdir):
    assert _outputs(runs, workdir, "tp2_server", server=True) == _outputs(runs, workdir, "single")
    assert "tensor parallel: 2 ranks" in runs["tp2_server"].stderr


def test_data_parallel_over_tensor_parallel_replicas_matches_single_engine(runs, workdir):
    """DP 2 x TP 2: two local node processes of two ranks each, reached over 127.0.0.1."""
    assert _outputs(runs, workdir, "dp2_tp2") == _outputs(runs, workdir, "single")
    assert "data parallel: 2 local nodes of tensor parallel 2" in runs["dp2_tp2"].stderr
    assert "local SUT nodes stopped (exit codes [0, 0])" in runs["dp2_tp2"].stderr


@pytest.mark.parametrize("name, layout", [("single", (1, 1, 1)), ("dp2", (1, 2, 2)), ("tp2_server", (2, 1, 2)),
                                          ("dp2_tp2", (2, 2, 4)), ("nodes_offline", None)])
def test_run_info_records_the_parallel_layout_that_ran(runs, workdir, name, layout):
    """run_info.json recorded only the base --device: a run over 4 processes read like one on a single device."""
    assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    info = read_run_info(str(workdir / name))
    if layout is None:  # the nodes generate: this process knows no layout
        assert (info.tensor_parallel, info.data_parallel, info.devices) == (None, None, ())
    else:
        assert (info.tensor_parallel, info.data_parallel, len(info.devices)) == layout
        assert set(info.devices) == {"cpu"}


@pytest.mark.parametrize("name, server", [("nodes_offline", False), ("nodes_server", True)])
def test_sut_node_runs_match_single_node_run(runs, workdir, name, server):
    assert _outputs(runs, workdir, name, server=server) == _outputs(runs, workdir, "single")
    detail = (workdir / name / "mlperf_log_detail.txt").read_text()
    assert "mlperf_llama2 SUT nodes" in detail  # LoadGen logged the QDL's name: it ran over the network
    assert "SUT nodes: requests per node" in runs[name].stderr


def test_test06_passes_for_server_through_sut_nodes(runs, workdir):
    result = runs["audit"]
    assert result.returncode == 0, result.stderr[-3000:]
    logs = workdir / "audit" / "logs"
    entries = read_accuracy_log(logs)
    assert len(entries) >= 50
    assert all(tokens(e["token_data"]).tolist() == tokens(e["data"])[:1].tolist() for e in entries)
    verify = run_main(["-c", logs, "-o", workdir / "audit" / "verified", "-s", "Server"], cwd=workdir / "audit",
                      script=str(REPO / "compliance" / "TEST06" / "run_verification.py"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = (workdir / "audit" / "verified" / "TEST06" / "verify_accuracy.txt").read_text().splitlines()
    assert report == ["First token check pass: True", "EOS check pass: True", "Sample length check pass: True",
                      "TEST06 verification complete"]
