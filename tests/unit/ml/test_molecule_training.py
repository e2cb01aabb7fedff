"""Checkpointed CharRNN training: an interrupted run resumes where it stopped and ends with the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from medbatch.errors import InvalidInput
from medbatch.ml import molecules
from medbatch.ml.molecules.training import epoch_batches, pack

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC", "O=C(O)c1ccccc1", "CCOC(=O)C", "C1CCCCC1", "CC(C)O"] * 12
CONFIG = molecules.MolConfig(embedding=8, units=16, layers=1, batch_size=16, epochs=2)


def test_epoch_batches_cover_every_molecule_once_and_resume_skips_exactly():
    encoded, _ = molecules.encode_all(molecules.Vocabulary.build(SMILES), SMILES)
    tokens, lengths = pack(encoded)
    rows = [tuple(r[r != 0]) for x, _y, _w in epoch_batches(tokens, lengths, 10, seed=4, epoch=1) for r in x]
    assert sorted(r[:1] for r in rows) == [(1,)] * len(SMILES)  # every row starts with the begin token
    assert len(rows) == len(SMILES)
    whole = list(epoch_batches(tokens, lengths, 10, seed=4, epoch=1))
    tail = list(epoch_batches(tokens, lengths, 10, seed=4, epoch=1, start=3))
    assert len(tail) == len(whole) - 3
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(whole[3:], tail, strict=True))
    other = list(epoch_batches(tokens, lengths, 10, seed=4, epoch=2))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(whole, other, strict=False))  # a new order per epoch


def test_interrupted_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    straight = molecules.train_generator(SMILES, config=CONFIG, seed=2)
    stopped = molecules.train_generator(SMILES, config=CONFIG, seed=2, checkpoint_dir=tmp_path, time_budget_s=0.0)
    assert stopped.meta["stopped_by_time_budget"]
    assert (tmp_path / "state.json").exists()
    lines: list[str] = []
    resumed = molecules.train_generator(SMILES, config=CONFIG, seed=2, checkpoint_dir=tmp_path, log=lines.append)
    assert any(line.startswith("resuming from") for line in lines)
    assert [h["epoch"] for h in resumed.meta["history"]] == [1, 2]
    for a, b in zip(straight.keras_model.get_weights(), resumed.keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    molecules.train_generator(SMILES, config=CONFIG, seed=2, checkpoint_dir=tmp_path, time_budget_s=0.0)
    with pytest.raises(InvalidInput, match="another training run"):
        molecules.train_generator(SMILES, config=CONFIG, seed=3, checkpoint_dir=tmp_path)


def test_asking_a_finished_run_for_more_epochs_continues_it(tmp_path):
    one = molecules.MolConfig(**{**CONFIG.__dict__, "epochs": 1})
    first = molecules.train_generator(SMILES, config=one, seed=2, checkpoint_dir=tmp_path)
    lines: list[str] = []
    more = molecules.train_generator(SMILES, config=CONFIG, seed=2, checkpoint_dir=tmp_path, log=lines.append)
    assert any("epoch 2/2" in line for line in lines) and not any("epoch 1/2 step" in line for line in lines)
    assert [h["epoch"] for h in more.meta["history"]] == [1, 2]
    assert more.meta["history"][0] == first.meta["history"][0]
    with pytest.raises(InvalidInput, match="already trained for 2"):
        molecules.train_generator(SMILES, config=one, seed=2, checkpoint_dir=tmp_path)
