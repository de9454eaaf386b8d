"""Data that stays home: each party reads its own file from its data directory (the cluster
file's `data`), so the rows never leave it, not even to the client that runs the training,
which learns only the shapes. Real processes from a cluster file over mutual TLS."""

import os

import pytest
import torch

from mpc import data_files
from mpc.api import MPCError
from mpc.compiler.training import SGD
from mpc.net.party_data import PartyData, PartyDataError, parse_source, source
from mpc.remote import RemoteCluster
from tests.cluster_files import start_cluster, stop_all, write_cluster


def test_a_party_reads_only_plain_names_inside_its_data_directory(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    data_files.write_csv(str(home / "rows.csv"), torch.ones(3, 2, dtype=torch.float64), torch.tensor([0, 1, 0]))
    (tmp_path / "secret.csv").write_text("a,label\n1,0\n")
    os.symlink(tmp_path / "secret.csv", home / "link.csv")
    data = PartyData(1, str(home), 16)
    x, y = data.load("rows.csv", "label", "cross_entropy", 2)
    assert x.shape == (3, 2) and y.shape == (3, 2)  # one-hot targets, as the program takes them
    for name, why in [("../secret.csv", "plain file names"), ("sub/rows.csv", "plain file names"),
                      (".hidden", "plain file names"), ("link.csv", "leads out of its data directory")]:
        with pytest.raises(PartyDataError, match=why):
            data.load(name, "label", "cross_entropy", 2)
    with pytest.raises(PartyDataError, match="has no data directory"):
        PartyData(1, None, 16).load("rows.csv", "label", "mse", None)
    with pytest.raises(PartyDataError, match="names exactly file, label, part, loss and classes"):
        parse_source('{"file": "rows.csv"}')
    assert parse_source(source("rows.csv", 2, "y", "mse", None)) == ("rows.csv", 2, "y", "mse", None)


@pytest.mark.slow
def test_training_on_files_the_parties_read_themselves_matches_training_on_uploads(tmp_path):
    path = write_cluster(tmp_path, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] - x[:, 1] > 0).long()
    for p in range(3):  # each party's rows in its own data directory, nowhere else
        data_files.write_csv(str(tmp_path / f"data-{p}" / "rows.csv"), x[30 * p:30 * (p + 1)], y[30 * p:30 * (p + 1)])
    procs = start_cluster(path, 3)
    try:
        with RemoteCluster.from_file(str(path), str(tmp_path / "certs")) as cluster:
            at_home = cluster.share_data_files({p: ("rows.csv", "label") for p in range(3)}, n_classes=2)
            uploaded = cluster.share_data({p: (x[30 * p:30 * (p + 1)], y[30 * p:30 * (p + 1)]) for p in range(3)},
                                          n_classes=2)
            assert (at_home.x_shape, at_home.y_shape) == (uploaded.x_shape, uploaded.y_shape) == ((90, 4), (90, 2))
            weights = []
            for data in (at_home, uploaded):
                torch.manual_seed(0)
                model = torch.nn.Sequential(torch.nn.Linear(4, 2))
                result = cluster.train(model, data, optimizer=SGD(0.5), epochs=2, batch_size=30, seed=1)
                weights.append(cluster.reveal_model(result))
            for k in weights[0]:
                assert (weights[0][k] - weights[1][k]).abs().max() < 2e-3, k
            with pytest.raises(MPCError, match="party 1: .*plain file names"):
                cluster.share_data_files({0: ("rows.csv", "label"), 1: ("../cluster.toml", "label")}, n_classes=2)
            data_files.write_csv(str(tmp_path / "data-2" / "bad.csv"), x[:5], torch.tensor([0, 1, 7, 0, 1]))
            with pytest.raises(MPCError, match="party 2: .*bad.csv.*label 7"):
                cluster.share_data_files({2: ("bad.csv", "label")}, n_classes=2)
    finally:
        stop_all(procs)
