"""repair_journal: a torn last record in Optuna's journal file is cut off (with a backup) so the study
loads and takes writes again; sound files are left alone; damage elsewhere is refused."""

import threading
import time

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from titk.errors import TitkError
from titk.sweep import journal as journal_module
from titk.sweep.journal import repair_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAME = "study"


def _storage(path):
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _load(path):
    return optuna.load_study(study_name=NAME, storage=_storage(path))


def _write_more(path):
    """Several appends from a fresh process's point of view: the step that a torn tail breaks."""
    study = _load(path)
    study.set_user_attr("after", 1)
    trial = study.ask()
    study.tell(trial, 0.5)


def _objective(trial):
    trial.set_user_attr("note", "x" * 20)
    return trial.suggest_float("x", 0.0, 1.0)


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """(all bytes, bytes before the last record, the last record): 3 finished trials and a running one."""
    path = tmp_path_factory.mktemp("journal") / "optuna.journal"
    study = optuna.create_study(study_name=NAME, storage=_storage(path))
    study.optimize(_objective, n_trials=3)
    trial = study.ask()
    trial.set_user_attr("running", "y" * 30)
    data = path.read_bytes()
    last = data.splitlines(keepends=True)[-1]
    assert b'"trial_id":3' in last  # the torn-record tests below rely on it naming trial 3
    return data, data[: -len(last)], last


def _backups(folder):
    return sorted(p.name for p in folder.iterdir() if ".torn-" in p.name)


def test_every_torn_tail_is_repaired_and_the_study_takes_writes_again(tmp_path, journal):
    _, before, last = journal
    for k in range(1, len(last)):  # every prefix of the last record, down to one without its newline
        folder = tmp_path / f"cut{k}"
        folder.mkdir()
        path = folder / "optuna.journal"
        torn = before + last[:k]
        path.write_bytes(torn)

        repair = repair_journal(path)

        assert repair is not None, k
        assert "\n" not in repair.message and repair.backup.name in repair.message, repair.message
        assert repair.backup.parent == folder and repair.backup.read_bytes() == torn
        assert repair.dropped_bytes == k and f"({k} bytes" in repair.message
        assert path.read_bytes() == before, k
        study = _load(path)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.RUNNING]
        assert "running" not in study.trials[3].user_attrs  # the torn record is gone, the one before kept
        _write_more(path)
        study = _load(path)
        assert len(study.trials) == 5 and study.trials[4].value == 0.5 and study.user_attrs == {"after": 1}


def test_without_repair_a_torn_tail_breaks_the_next_write_and_every_load(tmp_path, journal):
    _, before, last = journal
    for k in range(1, len(last)):
        path = tmp_path / f"optuna{k}.journal"
        path.write_bytes(before + last[:k])
        _load(path)  # Optuna itself reads past the torn tail without a word...
        with pytest.raises(ValueError):  # ...then writes after it, and the file no longer parses
            _write_more(path)
        with pytest.raises(ValueError):
            _load(path)


def test_sound_or_absent_journal_is_left_alone(tmp_path, journal):
    data, _, _ = journal
    path = tmp_path / "optuna.journal"
    assert repair_journal(path) is None
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(data)
    assert repair_journal(path) is None
    assert path.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["optuna.journal"]
    path.write_bytes(b"")
    assert repair_journal(path) is None and path.read_bytes() == b""


def test_a_journal_of_only_a_torn_record_becomes_empty(tmp_path, journal):
    data, _, _ = journal
    path = tmp_path / "optuna.journal"
    torn = data.split(b"\n")[0][:25]
    path.write_bytes(torn)
    repair = repair_journal(path)
    assert repair is not None and path.read_bytes() == b"" and repair.backup.read_bytes() == torn


def test_trial_ids_name_the_trial_of_a_torn_record(tmp_path, journal):
    _, before, last = journal
    path = tmp_path / "optuna.journal"
    after_id = last.index(b'"trial_id":3') + len(b'"trial_id":3,')
    path.write_bytes(before + last[:after_id])
    assert repair_journal(path).trial_ids == [3]

    # A torn "set state and values" record (a tell), of a trial whose id has two digits.
    path = tmp_path / "tell" / "optuna.journal"
    path.parent.mkdir()
    study = optuna.create_study(study_name=NAME, storage=_storage(path))
    for _ in range(12):
        study.tell(study.ask(), 1.0)
    data = path.read_bytes()
    last = data.splitlines(keepends=True)[-1]
    start = last.index(b'"trial_id":11')
    assert b'"state":1' in last  # COMPLETE: this is the tell's record
    for cut, expected in [(start, []), (start + len(b'"trial_id":1'), []), (start + len(b'"trial_id":11,'), [11])]:
        path.write_bytes(data[: -len(last)] + last[:cut])
        assert repair_journal(path).trial_ids == expected, last[:cut]


@pytest.mark.parametrize("case", ["garbage", "torn then appended"])
def test_a_bad_line_before_the_tail_is_refused(tmp_path, journal, case):
    data, before, last = journal
    lines = data.splitlines(keepends=True)
    if case == "garbage":
        damaged, number = b"".join(lines[:2] + [b'{"op_code": 4, ga\n'] + lines[3:]), 3
    else:  # what an unrepaired torn tail turns into after two more appends
        damaged, number = before + last[:40] + lines[1] + lines[2], len(lines)
    path = tmp_path / "optuna.journal"
    path.write_bytes(damaged)
    with pytest.raises(TitkError) as err:
        repair_journal(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"line {number} " in message and "backup" in message
    assert path.read_bytes() == damaged and _backups(tmp_path) == []


def test_an_existing_backup_is_never_overwritten(tmp_path, journal, monkeypatch):
    _, before, last = journal
    monkeypatch.setattr(journal_module.time, "strftime", lambda fmt: "20261130-054512")
    path = tmp_path / "optuna.journal"
    (tmp_path / "optuna.journal.torn-20261130-054512").write_bytes(b"older")
    path.write_bytes(before + last[:10])
    first = repair_journal(path)
    path.write_bytes(before + last[:20])
    second = repair_journal(path)
    assert (tmp_path / "optuna.journal.torn-20261130-054512").read_bytes() == b"older"
    assert first.backup.read_bytes() == before + last[:10] and second.backup.read_bytes() == before + last[:20]
    assert len({first.backup, second.backup}) == 2


def test_an_append_in_flight_is_not_mistaken_for_a_torn_record(tmp_path, journal):
    data, before, last = journal
    path = tmp_path / "optuna.journal"
    writer = JournalFileOpenLock(str(path))  # another process, halfway through an append
    writer.acquire()
    path.write_bytes(before + last[:30])
    result = []
    thread = threading.Thread(target=lambda: result.append(repair_journal(path)))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # waiting for the writer, not cutting its record off
    with open(path, "ab") as f:
        f.write(last[30:])
    writer.release()
    thread.join(10)
    assert result == [None] and path.read_bytes() == data and _backups(tmp_path) == []
