"""Where MLflow runs go: the project's store, also from DVC's temporary experiment copies."""

from __future__ import annotations

from ppf.tracking import store_dir


def test_the_store_is_the_projects_mlruns(tmp_path):
    assert store_dir(tmp_path) == tmp_path.resolve() / "mlruns"


def test_a_temporary_dvc_experiment_logs_into_the_projects_store(tmp_path):
    temp_copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp_copy.mkdir(parents=True)
    assert store_dir(temp_copy) == (tmp_path / "proj").resolve() / "mlruns"
