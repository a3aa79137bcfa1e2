"""Several processes opening one fresh SQLite MLflow store at once all get a working client."""

import multiprocessing as mp

from al_assets.core.registry import get_or_create_experiment, open_client


def _open(uri: str, queue) -> None:
    try:
        client = open_client(uri)
        queue.put(get_or_create_experiment(client, "al_assets", None))
    except Exception as error:  # reported to the parent, which asserts on it
        queue.put(f"failed: {error!r}")


def test_concurrent_first_use_of_a_sqlite_store_does_not_race_the_migration(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(uri, queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert not [r for r in results if str(r).startswith("failed")], results
    assert len(set(results)) == 1, results  # one experiment, whoever created it
    client = open_client(uri)
    assert client.get_experiment_by_name("al_assets") is not None
