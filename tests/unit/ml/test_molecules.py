"""The SMILES CharRNN and its RDKit scoring: tokens, training, seeded sampling, SA score, metrics."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medbatch.errors import InvalidInput, ModelMisconfigured
from medbatch.ml import chem, molecules, moses
from tests.helpers import need


def test_tokenizer_round_trips_multi_character_tokens():
    smiles = "Clc1ccc2[nH]c(C(=O)O[C@@H]3CC%10CC3)cc2c1Br.[Na+]"
    tokens = molecules.tokenize(smiles)
    assert "".join(tokens) == smiles
    assert {"Cl", "Br", "[nH]", "[C@@H]", "%10", "[Na+]"} <= set(tokens)
    vocab = molecules.Vocabulary.build([smiles])
    ids = vocab.encode(smiles)
    assert ids[0] == 1 and ids[-1] == 2 and vocab.decode(ids) == smiles
    assert vocab.decode([1, *ids[1:4], 2, 5, 6]) == "".join(tokens[:3])  # stops at the end token


def test_tokenizer_refuses_what_it_cannot_reproduce():
    with pytest.raises(InvalidInput):
        molecules.tokenize("C C")
    vocab = molecules.Vocabulary.build(["CCO"])
    with pytest.raises(InvalidInput, match="not in the vocabulary"):
        vocab.encode("CCCl")


def test_moses_training_smiles_all_tokenize():
    train = molecules.read_moses_smiles("train")
    assert len(train) == 1_584_663
    sample = molecules.sample_subset(train, 5000, 1)
    assert all("".join(molecules.tokenize(s)) == s for s in sample)
    assert molecules.sample_subset(train, 10, 3) == molecules.sample_subset(train, 10, 3)


@pytest.fixture(scope="module")
def generator(molecule_artifact):
    return molecules.load_model(molecule_artifact)


def test_artifact_is_one_zip_with_vocab_and_meta_loaded_safely(molecule_artifact, generator):
    with zipfile.ZipFile(molecule_artifact) as zf:
        assert sorted(zf.namelist()) == ["meta.json", "model.keras", "vocab.json"]
        meta = json.loads(zf.read("meta.json"))
    assert meta["format"] == molecules.ARTIFACT_FORMAT and meta["n_train"] == 400
    assert meta["history"][-1]["validation_nll_per_token"] < meta["history"][0]["train_nll_per_token"]
    assert generator.vocab.size == meta["vocab_size"] and len(generator.version) == 16


def test_sampling_is_deterministic_for_a_seed_and_varies_with_it(generator):
    a = generator.sample(64, seed=7)
    b = generator.sample(64, seed=7)
    c = generator.sample(64, seed=8)
    assert a == b
    assert [g.smiles for g in a] != [g.smiles for g in c]
    ids = generator.sample_ids(64, seed=7)
    assert ids.shape[0] == 64 and set(np.unique(ids)) <= set(range(generator.vocab.size))
    # The tiny model has learnt the alphabet: most tokens are atoms, bonds, rings and branches
    text = "".join(g.smiles for g in a)
    assert sum(ch in "CNOcnos()=123" for ch in text) > 0.7 * len(text)


def teacher_forced_nll(keras_model, ids: np.ndarray, temperature: float) -> np.ndarray:
    """Each sequence's NLL from one forward pass over its tokens (begin token first), as training scores it."""
    inputs = np.concatenate([np.ones((len(ids), 1), np.int32), ids[:, :-1]], axis=1)
    logits = keras_model.predict(np.where(inputs == 0, 2, inputs), verbose=0).astype(np.float64) / temperature
    logits[..., :2] = -np.inf  # padding and begin are never drawn
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return -np.where(ids != 0, np.take_along_axis(logp, ids[..., None], -1)[..., 0], 0.0).sum(1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_each_sample_carries_its_nll_as_teacher_forcing_scores_it(generator, temperature):
    ids, nll = generator.sample_ids_nll(32, seed=4, temperature=temperature)
    assert np.array_equal(ids, generator.sample_ids(32, seed=4, temperature=temperature))  # same draws
    np.testing.assert_allclose(nll, teacher_forced_nll(generator.keras_model, ids, temperature), atol=1e-6)
    samples = generator.sample(32, seed=4, temperature=temperature)
    assert [g.nll for g in samples] == [round(float(v), 4) for v in nll] and all(g.tokens > 0 for g in samples)


def every_row_sampler(gen, n: int, seed: int, temperature: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The sampler as it was before live-row stepping: all ``n`` rows go through every step, ended ones masked."""
    step, rng = gen._compiled_step(), np.random.default_rng(seed)
    states = [np.zeros((n, u), dtype=np.float32) for u in gen._state_shapes()]
    tokens, out = np.full(n, 1, dtype=np.int32), np.zeros((n, limit), dtype=np.int32)
    done, nll = np.zeros(n, dtype=bool), np.zeros(n)
    for t in range(limit):
        logits, *states = step(tokens, *states)
        logits = np.asarray(logits, dtype=np.float64) / temperature
        logits[:, :2] = -np.inf
        nxt = np.argmax(logits - np.log(-np.log(rng.uniform(1e-12, 1.0, size=logits.shape))), axis=1).astype(np.int32)
        top = logits.max(axis=1)
        log_z = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        nll += np.where(done, 0.0, log_z - logits[np.arange(n), nxt])
        nxt[done] = 0
        out[:, t] = nxt
        done |= nxt == 2
        tokens = np.where(done, 2, nxt).astype(np.int32)
        if done.all():
            return out[:, : t + 1], nll
    return out, nll


@pytest.mark.parametrize(("n", "seed", "temperature", "limit"), [(64, 7, 1.0, 100), (33, 2, 0.7, 100), (16, 5, 1.3, 6)])
def test_stepping_only_live_rows_draws_the_same_molecules_as_stepping_every_row(generator, n, seed, temperature, limit):
    # re-delivering a batch sampled before the sampler dropped ended rows must give the very same molecules.
    # Their likelihoods agree to float32 rounding, not always to the bit: the CPU kernels a matrix product
    # gets depend on its row count on some machines (bit-equal on one 2-core machine, 1e-6 apart on another)
    ids, nll = generator.sample_ids_nll(n, seed=seed, temperature=temperature, max_tokens=limit)
    ref_ids, ref_nll = every_row_sampler(generator, n, seed, temperature, limit)
    assert np.array_equal(ids, ref_ids)
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-6, atol=1e-5)


def test_a_gru_model_samples_through_the_same_sampler(generator):
    # the sampler finds recurrent layers by what they are (a cell), not by name: a GRU CharRNN samples too
    import keras

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(generator.vocab.size, 8, name="embedding")(tokens)
    x = keras.layers.GRU(12, return_sequences=True, name="gru_1")(x)
    x = keras.layers.LSTM(10, return_sequences=True, name="lstm_2")(x)
    model = keras.Model(tokens, keras.layers.Dense(generator.vocab.size, name="logits")(x))
    gru = molecules.MoleculeGenerator("m", "1", model, generator.vocab, {})
    assert gru._state_shapes() == [12, 10, 10]
    ids, nll = gru.sample_ids_nll(6, seed=1, max_tokens=12)
    np.testing.assert_allclose(nll, teacher_forced_nll(model, ids, 1.0), atol=1e-6)


def test_sampling_validates_temperature_and_handles_nothing_to_do(generator):
    with pytest.raises(InvalidInput, match="temperature"):
        generator.sample(4, seed=0, temperature=0)
    assert generator.sample(0, seed=0) == []
    short = generator.sample(8, seed=0, max_tokens=2)  # cut off before most can end
    assert all(len(molecules.tokenize(g.smiles)) <= 2 for g in short)
    assert any(not g.ended for g in short)


def test_same_seed_trains_the_same_weights(moses_smiles):
    smiles = molecules.sample_subset(moses_smiles, 32, 0)
    config = molecules.MolConfig(embedding=8, units=16, layers=1, batch_size=16, epochs=1)
    w1 = molecules.train_generator(smiles, config=config, seed=3).keras_model.get_weights()
    w2 = molecules.train_generator(smiles, config=config, seed=3).keras_model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(w1, w2, strict=True))


def test_a_tampered_or_foreign_zip_is_refused(tmp_path, molecule_artifact):
    bad = tmp_path / "molecules.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model.keras", b"not a model")
    with pytest.raises(ModelMisconfigured, match="not a medbatch molecule artifact"):
        molecules.load_model(bad)
    with zipfile.ZipFile(molecule_artifact) as src, zipfile.ZipFile(bad, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == "model.keras":
                data = data[: len(data) // 2]
            zf.writestr(name, data)
    with pytest.raises(ModelMisconfigured, match="cannot load"):
        molecules.load_model(bad)


# --------------------------------------------------------------------------- RDKit scoring


def test_sa_score_matches_rdkits_reference_values():
    from rdkit import Chem, RDConfig

    path = Path(RDConfig.RDContribDir) / "SA_Score" / "data" / "zim.100.txt"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 100
    for smiles, _name, expected in rows:
        assert chem.sascorer().calculateScore(Chem.MolFromSmiles(smiles)) == pytest.approx(float(expected), abs=1e-3)


def test_a_drug_is_scored_with_every_property():
    training = chem.TrainingSet.from_smiles(["CCO"])
    aspirin = chem.score("OC(=O)c1ccccc1OC(C)=O", training)
    assert aspirin.valid and aspirin.canonical == "CC(=O)Oc1ccccc1C(=O)O"
    assert aspirin.mol_weight == pytest.approx(180.159, abs=0.01)
    assert aspirin.qed == pytest.approx(0.55, abs=0.01)
    assert aspirin.logp == pytest.approx(1.31, abs=0.01)
    assert 1 < aspirin.sa_score < 3 and aspirin.lipinski_pass and aspirin.pains == []
    assert aspirin.passes_moses_filters and aspirin.novel
    assert not chem.score("OCC", training).novel  # canonical CCO is in the set


def test_pains_alerts_and_lipinski_violations_are_reported():
    rhodanine = chem.score("S=C1SC(=Cc2ccccc2)C(=O)N1")  # a classic ene_rhod PAINS
    assert rhodanine.valid and any("ene_rhod" in p for p in rhodanine.pains)
    assert not rhodanine.passes_moses_filters
    big = chem.score("CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O")  # logP far above 5
    assert big.lipinski_violations >= 1
    charged = chem.score("C[N+](C)(C)C")
    assert charged.valid and not charged.passes_moses_filters  # MOSES refuses charges


@pytest.mark.parametrize(
    ("smiles", "reason"),
    [
        ("", "empty generation"),
        ("C1CC", "not parseable"),
        ("c1ccccc", "not parseable"),
        ("C(C)(C)(C)(C)C", "valence"),
        ("c1cccc1", "sanitization"),
        ("((((", "not parseable"),
    ],
)
def test_invalid_strings_are_results_with_reasons_not_exceptions(smiles, reason):
    s = chem.score(smiles)
    assert not s.valid and reason in s.reason
    assert s.canonical is None and s.qed is None and s.novel is None


def test_training_set_membership_by_hash(moses_smiles):
    training = chem.TrainingSet.from_smiles(["CCO", "c1ccccc1", "CCO"])
    assert len(training) == 2
    assert "CCO" in training and "c1ccccc1" in training and "CCN" not in training
    moses = chem.moses_training_set()
    assert len(moses) == 1_584_663
    first = moses_smiles[0]  # the file's first SMILES
    assert first in moses and "C" * 30 not in moses


# --------------------------------------------------------------------------- metrics


def _rec(canonical, *, novel=True, filters=True):
    return {"canonical": canonical, "novel": novel if canonical else None, "passes_moses_filters": filters}


def test_metrics_on_known_inputs():
    records = [_rec("CCO"), _rec("CCO"), _rec(None), _rec("c1ccccc1", novel=False, filters=False), _rec("CCN")]
    m = chem.set_metrics(records)
    assert m["generated"] == 5 and m["valid"] == 4 and m["unique"] == 3 and m["duplicates"] == 1
    assert m["validity"] == 0.8
    # Fewer than k valid: MOSES warns and uses them all, and so do we, saying how many were used
    assert m["unique@1k"] == m["unique@10k"] == 0.75 and m["unique@k_used"] == {"1k": 4, "10k": 4}
    assert m["unique_fraction"] == 0.75
    assert m["novelty"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["filters"] == 0.75
    # IntDiv: identical molecules only -> 0; MOSES counts self pairs, so two disjoint ones give 0.5
    assert chem.internal_diversity(["CCO", "CCO"]) == 0.0
    fps = chem.morgan_fingerprints(["CCO", "c1ccccc1"])
    assert not (fps[0] & fps[1]).any()
    assert chem.internal_diversity(["CCO", "c1ccccc1"]) == 0.5


def test_unique_at_k_uses_the_first_k_valid():
    valid = [_rec(f"C{'C' * (i % 900)}O") for i in range(1200)] + [_rec(None)] * 10
    m = chem.set_metrics(valid)
    assert m["unique@1k"] == 0.9 and m["unique@10k"] == 0.75 and m["unique@k_used"]["10k"] == 1200


def test_metrics_of_an_empty_or_all_invalid_generation():
    assert chem.set_metrics([])["validity"] is None
    m = chem.set_metrics([_rec(None), _rec(None)])
    assert m["validity"] == 0.0 and m["valid"] == 0 and m["novelty"] is None
    assert m["intdiv"] is None and m["filters"] is None


def test_the_shipped_moses_copies_equal_molsets_data():
    """Generation reads the shipped filter SMARTS and training-set hashes (a plain pip install has no molsets);
    they must be exactly what molsets' own files give."""
    try:
        data = moses.moses_data_dir()
    except Exception as exc:  # noqa: BLE001
        need("molsets", str(exc))
    metrics = data.parent.parent / "metrics"
    with open(metrics / "mcf.csv", newline="") as fh:
        expected = [row["smarts"].strip() for row in csv.DictReader(fh)]
    with open(metrics / "wehi_pains.csv", newline="") as fh:
        expected += [row[0].strip() for row in csv.reader(fh, skipinitialspace=True) if row]
    assert moses.moses_filter_smarts() == expected
    shipped = np.load(moses.SHIPPED_TRAIN_HASHES, allow_pickle=False)
    assert np.array_equal(shipped, moses.TrainingSet.from_smiles(moses.read_moses_smiles("train")).hashes)


def test_molecules_are_scored_without_molsets(monkeypatch):
    def missing():
        raise InvalidInput("the MOSES data is missing: `pip install --no-deps molsets`")

    monkeypatch.setattr(moses, "moses_data_dir", missing)
    monkeypatch.setattr(moses, "_cache", {})
    monkeypatch.delitem(chem._cache, "moses_filters", raising=False)
    training = moses.moses_training_set()
    assert len(training) == 1_584_663
    assert len(moses.moses_filter_smarts()) == 502
    s = chem.score("CCO", training)
    assert s.valid and s.novel is not None
