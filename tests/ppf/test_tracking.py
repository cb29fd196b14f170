"""Where MLflow runs go: the project's store, also from DVC's temporary experiment copies."""

from __future__ import annotations

from ppf.tracking import store_dir


def test_the_store_is_the_projects_mlruns(tmp_path):
    assert store_dir(tmp_path) == tmp_path.resolve() / "mlruns"


def test_a_temporary_dvc_experiment_logs_into_the_projects_store(tmp_path):
    temp_copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp_copy.mkdir(parents=True)
    assert store_dir(temp_copy) == (tmp_path / "proj").resolve() / "mlruns"


def test_a_registered_predictor_and_agent_serve_through_mlflow_pyfunc(tmp_path, monkeypatch):
    """Registered as the stages register them (:func:`ppf.champion.promote`), loaded back with
    ``mlflow.pyfunc.load_model``: the served answers are the in-process models' answers."""
    import mlflow.pyfunc
    import numpy as np
    import torch

    from ppf import champion, tracking
    from ppf.agent import Agents, build_actor, save_agents
    from ppf.predictor import NetConfig, TrainConfig, fit, load_predictor, save_predictor

    monkeypatch.setattr(tracking, "_USER_URI", None)  # the project's own store under tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow writes it; taken off again after the test
    rng = np.random.default_rng(0)
    images = rng.integers(0, 2, size=(12, 1, 3, 4)).astype(np.float32)
    net, _ = fit(images, rng.uniform(0.1, 1.0, size=12), NetConfig(width=4, hidden=(8, 4)), TrainConfig(epochs=1))
    pred_file = save_predictor(net, tmp_path / "predictor", {"model": "m", "input": "o_proj", "image_shape": [1, 3, 4]})
    torch.manual_seed(0)
    actors = {m: build_actor((8,)) for m in ("dynamic", "static-0.3")}
    save_agents(actors, {"dynamic": (0.2, 0.4), "static-0.3": (0.3, 0.3)}, tmp_path / "agent", {"model": "m", "net_arch": [8]})
    chosen = {"contender": "llm_pruner", "policy": "uniform,keep=1:1,attn=groups", "ppl_valid": 9.0, "windows": 4}
    agent_file = Agents.load(tmp_path / "agent").with_choices({"0.3": chosen}, tmp_path / "agent")
    with tracking.run(tmp_path, "ppf-test", "register"):
        pred = champion.promote("predictor", pred_file, "ppf-predictor-test", 0.5, lambda f: 1.0, "mae")
        agent = champion.promote("agent", agent_file, "ppf-agent-test", 0.5, lambda f: 1.0, "ppr")
    assert pred == {"version": "1", "champion": True, "reason": "no champion yet"} and agent["version"] == "1"

    served = mlflow.pyfunc.load_model("models:/ppf-predictor-test@champion")
    x = rng.integers(0, 2, size=(5, 1, 3, 4)).astype(np.float32)
    local, meta = load_predictor(pred_file)
    with torch.no_grad():
        expected = local(torch.as_tensor(x)).numpy()
    out = np.asarray(served.predict(x))
    assert out.shape == (5,) and np.array_equal(out, expected)
    assert not np.allclose(expected, expected[0])  # the inputs are told apart: a real comparison

    served = mlflow.pyfunc.load_model("models:/ppf-agent-test/1")
    ratios = np.array([0.25, 0.3, 0.35])
    local_agents = Agents.load(agent_file)
    expected = [str(local_agents.policy_for(r)["policy"]) for r in ratios]
    assert list(served.predict(ratios)) == expected
    assert expected[1] == chosen["policy"] and expected[0] == str(local_agents.decide(0.25)["policy"])  # both branches
