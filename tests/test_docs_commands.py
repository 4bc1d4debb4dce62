"""Every `titk` command shown in README.md's and docs/*.md's code blocks runs as a user types it.

The commands are read from the documents themselves (fenced blocks; lines ending in `\\` joined, `# comments`
dropped, a leading `.venv/bin/` dropped), so a command added to the docs is run here, or listed in
COVERED_ELSEWHERE with the test that runs it, or this module fails.

They run in one scratch folder that holds, under the very names the documents use, offline stand-ins for
the user's own files (STAND_INS). The command's words are kept, split and globbed as a POSIX shell
would, and run in-process through titk's entry point; only two tables add options after them: NEEDS (what
a stand-in needs that the real thing would not: the tiny model's config folder, random CLIP weights) and
SHRINK (sizes a CPU test can afford: one trial, two steps, 64 px; with SHRINK_SUITES, the prompt suites
`person` and `quick` shrunk in the scratch folder's experiments/prompts/, where titk looks for a user's own
suites before its shipped ones). tests/test_architecture.py runs the installed console script itself.
"""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Documented:
    where: str  # README.md:72
    env: tuple[str, ...]  # VAR=value words before the command
    argv: tuple[str, ...]  # ("titk", "plan", ...) as the shell would pass it (before globbing)
    raw: str  # the logical line as written, for the shell's rules on quoted globs

    @property
    def text(self) -> str:
        return " ".join(self.env + self.argv)

    @property
    def subcommand(self) -> str:
        """`plan`, or `dataset check`, `toyworld pretrain` for the command groups."""
        words = [a for a in self.argv[1:3] if not a.startswith("-")]
        return " ".join(words[:2]) if words and words[0] in GROUPS else (words[0] if words else "")


GROUPS = {"dataset", "toyworld"}


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)


def documented_commands(docs: list[Path] = DOCS, root: Path = ROOT) -> list[Documented]:
    """Each `titk ...` command in the documents' fenced code blocks, in the order written."""
    found = []
    for doc in docs:
        lines, inside, start, pending = doc.read_text().splitlines(), False, 0, ""
        for number, line in enumerate(lines, 1):
            if FENCE.match(line):
                inside, pending = not inside, ""
                continue
            if not inside:
                continue
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            logical, pending = pending + line, ""
            if not re.search(r"(^|[\s;&|/])titk(\s|$)", logical.split("#")[0]):
                continue  # no command of titk's (a tree of files, a diagram, another tool)
            segment: list[str] = []
            for word in [*_words(logical), ";"]:
                if word not in SEPARATORS:
                    segment.append(word)
                    continue
                env = []
                while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
                    env.append(segment.pop(0))
                if segment and segment[0].removeprefix(".venv/bin/") == "titk":
                    where = f"{doc.relative_to(root)}:{start}"
                    found.append(Documented(where, tuple(env), ("titk", *segment[1:]), logical))
                segment = []
    return found


# ------------------------------------------------------------------------------------------ the three tables

# Documented placeholder → the offline stand-in put under that name in the scratch folder, so the
# command's own words find it. (A documented file the table lacks makes its command fail: "no such file".)
STAND_INS = {
    "sd15.safetensors": "the tiny SD1 fixture as a single-file checkpoint (LDM layout, like a real SD1.5 file)",
    "photos/": "five real photos of one person (../shared/assets/faces/obama__*)",
    "buffalo_l": "the real test face pack ../shared/assets/face-test-pack, as $TITK_INSIGHTFACE_ROOT/models/buffalo_l",
    "my.yaml": "the recipe the README copies, with model.source set as its comment says",
    "experiments/": "the project's recipes and sweeps (prompts/ holds the shrunk suites, see SHRINK_SUITES)",
}


def make_stand_ins(where: Path, fixtures, assets: Path) -> dict[str, str]:
    """Fill `where` with STAND_INS; returns the environment the commands run with."""
    shutil.copy(fixtures["tiny-sd1"].safetensors, where / "sd15.safetensors")
    (where / "photos").mkdir()
    for photo in sorted((assets / "faces").glob("obama__*")):
        shutil.copy(photo, where / "photos" / photo.name)
    packs = where / ".insightface" / "models"
    packs.mkdir(parents=True)
    (packs / "buffalo_l").symlink_to(assets / "face-test-pack", target_is_directory=True)
    (where / "experiments" / "prompts").mkdir(parents=True)
    for name in ("recipes", "sweeps"):
        (where / "experiments" / name).symlink_to(ROOT / "experiments" / name, target_is_directory=True)
    recipe = yaml.safe_load((ROOT / "experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml").read_text())
    recipe["model"]["source"] = "sd15.safetensors"
    (where / "my.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    for name, suite in SHRINK_SUITES.items():
        (where / "experiments" / "prompts" / f"{name}.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return {"TITK_INSIGHTFACE_ROOT": str(where / ".insightface")}


# What a stand-in needs that the real thing would not, per subcommand run here: the tiny model's
# architecture is not SD1.5's, so it comes with its config folder ({config}: a path); open_clip's weights
# cannot be downloaded here, so CLIP judges with random weights. The keys are the subcommands run here.
NEEDS = {
    "dataset check": [],
    "plan": ["--set", "model.config_dir={config}"],
    "train": ["--set", "model.config_dir={config}"],
    "eval": ["--set", "model.config_dir={config}", "--set", "evaluation.clip.pretrained=null"],
    "inspect": ["--model-config", "{config}"],
    "convert": [],
    "sweep": ["--set", "base.model.config_dir={config}", "--set", "evaluation.clip.pretrained=null"],
    "report": [],
    "confirm": [],
}


# SHRINK: every size change made for a CPU test lives here, and only here.
SHRINK = {
    "train": ["--set", "train.max_steps=2", "--set", "output.save_every=1", "--set", "data.width=64", "--set", "data.height=64"],
    "train --resume": ["--set", "train.max_steps=3", "--set", "output.save_every=1", "--set", "data.width=64", "--set", "data.height=64"],
    "sweep": ["--set", "n_trials=1", "--set", "base.data.width=64", "--set", "base.data.height=64",
              "--set", "space.train.epochs.low=1", "--set", "space.train.epochs.high=1", "--set", "space.train.epochs.step=null"],
}
_SMALL = {"sampler": "dpm++2m", "steps": 2, "cfg": 7.0, "seeds": [1]}
SHRINK_SUITES = {  # the shipped suites' kinds, one prompt each, one seed, two steps
    "person": {**_SMALL, "prompts": [{"kind": "identity", "text": "a photo of [name]"},
                                     {"kind": "editability", "text": "a photo of [name] on the beach"},
                                     {"kind": "personality", "text": "[name]"}]},
    "quick": {**_SMALL, "prompts": [{"kind": "identity", "text": "a photo of [name]"}, {"kind": "personality", "text": "[name]"}]},
}
# The order commands run in: each stage's inputs come from the stages before it (documents' order within a stage).
STAGES = ["dataset check", "plan", "train", "eval", "inspect", "convert", "sweep", "confirm", "report"]
assert set(STAGES) == set(NEEDS)

# Documented commands another test runs (the command exactly as documented → the test). Short, and honest:
# none fits here: the demo sweep (the README's main job; run there with --set n_trials=2), a server that runs
# until stopped (started and signalled there as a real process), a study on PostgreSQL with an MLflow server
# (skipped where no PostgreSQL can be started), and the toy model's 2-hour pretraining (tested there through
# its API, with sizes the CLI does not offer: the CLI renders 6,144 images however few steps it is given).
COVERED_ELSEWHERE = {
    "titk demo": "tests/test_demo.py::test_demo_runs_and_says_how_to_look_at_it",
    "titk serve work/person": "tests/test_serve.py::test_a_signal_stops_both_servers_and_their_workers",
    "titk serve ../work/person --port 5001 --dashboard-port 8081": "tests/test_serve.py::test_a_signal_stops_both_servers_and_their_workers",
    "titk sweep experiments/sweeps/person-settings.yaml --storage postgresql://… --tracking-uri http://mlflow-host:5000 --create-only":
        "tests/test_distributed.py::test_two_workers_one_killed",
    "CUDA_VISIBLE_DEVICES=0 titk worker experiments/sweeps/person-settings.yaml --storage postgresql://… --tracking-uri "
    "http://mlflow-host:5000 -w /scratch/titk-gpu0": "tests/test_distributed.py::test_two_workers_one_killed",
    "titk report /scratch/titk-gpu0 -o report.html": "tests/test_distributed.py::test_two_workers_one_killed",
    "titk serve /scratch/titk-gpu0": "tests/test_distributed.py::test_two_workers_one_killed",
    "titk confirm work/person --trial 7 --trial 12 --seeds 5": "tests/test_confirm.py::test_a_sweep_measures_seed_noise_and_confirms_on_fresh_seeds",
    "titk toyworld pretrain --out titk/toyworld/weights": "tests/test_toyworld.py::test_pretraining_writes_a_loadable_model_and_an_honest_record",
    "titk toyworld pretrain --family sdxl --out titk/toyworld/weights/sdxl":
        "tests/test_toyworld_sdxl.py::test_sdxl_pretraining_reuses_the_worlds_vision_model_and_vae",
    "titk toyworld pretrain --family sd3 --out sd3-stage1":
        "tests/test_toyworld_sd3.py::test_sd3_pretraining_trains_its_tokenizer_and_continues",
    "titk toyworld pretrain --family sd3 --out titk/toyworld/weights/sd3 --continue-from sd3-stage1/model --unet-steps 1000 "
    "--partial-captions 0.5": "tests/test_toyworld_sd3.py::test_the_second_stage_command_reaches_its_settings",
    "titk toyworld pretrain --family flux --out flux-stage1":
        "tests/test_toyworld_flux.py::test_flux_pretraining_trains_its_tokenizer_and_continues",
    "titk toyworld pretrain --family flux --out titk/toyworld/weights/flux --continue-from flux-stage1/model --unet-steps 2500 "
    "--timestep-weighting logit_normal --partial-captions 0.5": "tests/test_toyworld_flux.py::test_the_second_stage_command_reaches_its_settings",
    "titk inspect flux1-dev-finetune.safetensors --model-config FLUX.1-dev --dtype bf16":
        "tests/test_flux.py::test_a_flux_single_file_loads_its_transformer_with_the_folders_encoders",
    "titk demo --set base.model.source=toyworld-flux --set evaluation.sampler=euler --set evaluation.true_cfg=5 --set base.embedding.train_t5=true":
        "tests/test_toyworld_flux.py::test_a_sweep_and_the_file_commands_work_on_the_flux_toy_model",
}


def shrink_for(command: Documented) -> list[str]:
    key = command.subcommand + (" --resume" if "--resume" in command.argv else "")
    return SHRINK.get(key, SHRINK.get(command.subcommand, []))


def to_run(commands: list[Documented]) -> list[Documented]:
    """The documented commands this module runs, in stage order; each command text once."""
    seen, picked = set(), []
    for command in commands:
        if command.text not in COVERED_ELSEWHERE and command.subcommand in NEEDS and command.text not in seen:
            seen.add(command.text)
            picked.append(command)
    return sorted(picked, key=lambda c: STAGES.index(c.subcommand) if c.subcommand in STAGES else len(STAGES))


def unmapped(commands: list[Documented]) -> list[str]:
    """Documented commands neither run here (a subcommand the tables know) nor covered elsewhere."""
    return [f"{c.where}: {c.text}" for c in commands if c.text not in COVERED_ELSEWHERE and c.subcommand not in NEEDS]


def _test_exists(ref: str) -> bool:
    path, _, name = ref.partition("::")
    return (ROOT / path).is_file() and re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.MULTILINE) is not None


# ------------------------------------------------------------------------------------------ the rule

def test_every_documented_command_is_run_here_or_covered_elsewhere():
    commands = documented_commands()
    assert len(commands) >= 20, [c.text for c in commands]  # the parser still sees the documents' blocks
    texts = {c.text for c in commands}
    problems = [f"no test runs {where}" for where in unmapped(commands)]
    problems += [f"COVERED_ELSEWHERE lists a command no document shows: {text}" for text in COVERED_ELSEWHERE if text not in texts]
    problems += [f"COVERED_ELSEWHERE names a test that does not exist: {ref}" for ref in set(COVERED_ELSEWHERE.values()) if not _test_exists(ref)]
    assert not problems, "\n".join(problems) + "\n(a command runs here when its subcommand is in NEEDS; else list it in COVERED_ELSEWHERE)"
    assert len(RUN) + len(COVERED_ELSEWHERE) >= len(texts)


def test_the_rule_catches_an_unmapped_command(tmp_path):
    """A command the tables cannot map, added to a document, is reported (here: a scratch copy of the README)."""
    doc = tmp_path / "README.md"
    doc.write_text((ROOT / "README.md").read_text() + "\n```bash\ntitk doctor --json   # a new example\n```\n")
    found = documented_commands([doc], tmp_path)
    assert found[-1].text == "titk doctor --json" and found[-1] not in to_run(found)
    assert unmapped(found)[-1] == f"README.md:{len(doc.read_text().splitlines()) - 1}: titk doctor --json"


def test_the_parser_reads_shell_lines_as_a_shell_does(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text `titk inline` is not a block\n```bash\nscripts/setup.sh && .venv/bin/titk demo   # the main job\n"
                   "titk sweep a.yaml -w w \\\n    --set x=1   # two lines\nA=1 titk worker s.yaml '--set' 'a=b c'\nmlflow server\n```\n"
                   "```\ntitk plan c.yaml\n```\n")
    found = documented_commands([doc], tmp_path)
    assert [c.argv for c in found] == [("titk", "demo"), ("titk", "sweep", "a.yaml", "-w", "w", "--set", "x=1"),
                                       ("titk", "worker", "s.yaml", "--set", "a=b c"), ("titk", "plan", "c.yaml")]
    assert [c.where for c in found] == ["x.md:3", "x.md:4", "x.md:6", "x.md:10"]
    assert found[2].env == ("A=1",) and found[2].subcommand == "worker"


# ------------------------------------------------------------------------------------------ running them

def _expand(word: str, raw: str, cwd: Path) -> list[str]:
    """What a shell passes for `word`: an unquoted glob expanded (sorted; kept as is when nothing matches)."""
    if any(ch in word for ch in "*?[") and word in raw.split():
        matches = sorted(glob.glob(word, root_dir=cwd))
        return matches or [word]
    return [word]


def _run(argv: list[str]) -> tuple[int, str, str]:
    from titk.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


RUN = to_run(documented_commands())


@pytest.fixture(scope="module")
def ran(tmp_path_factory, fixtures, assets):
    """Every command in RUN, run once in one scratch folder: {command text: (exit code, stdout, stderr)}."""
    where = tmp_path_factory.mktemp("docs-commands")
    env = make_stand_ins(where, fixtures, assets)
    config = str(fixtures["tiny-sd1"].folder)
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        for key, value in env.items():
            mp.setenv(key, value)
        for command in RUN:
            args = [w for word in command.argv[1:] for w in _expand(word, command.raw, where)]
            stand_in = [w.format(config=config) for w in NEEDS[command.subcommand]]
            results[command.text] = _run([*args, *stand_in, *shrink_for(command)])
    return where, results


@pytest.mark.assets
@pytest.mark.parametrize("command", RUN, ids=[f"{c.where} {c.subcommand}" for c in RUN])
def test_documented_command_runs_as_typed(command, ran):
    where, results = ran
    code, out, err = results[command.text]
    assert code == 0, f"{command.where}: `{command.text}` exited {code}:\n{err[-3000:]}"
    assert "Traceback" not in err and "error:" not in err, err[-3000:]
    # What each command promises, checked where the documents name it.
    if command.subcommand == "train":
        run = Path(command.argv[command.argv.index("-o") + 1])
        assert (where / run / "ohwx.pt").is_file() and (where / run / "ohwx.safetensors").is_file()
    elif command.subcommand == "eval":
        out_dir = where / (command.argv[command.argv.index("-o") + 1] if "-o" in command.argv else "eval")
        summary = (out_dir / "summary.csv").read_text()
        assert "ohwx.pt" in summary and "ohwx-2.pt" in summary  # the final embedding and the checkpoints
    elif command.subcommand == "sweep":
        assert "trial 0 complete" in out and "study person-settings: 1 complete" in out
    elif command.subcommand == "confirm":
        assert "decision:" in out and (where / command.argv[2] / "confirmation.json").is_file()
    elif command.subcommand == "report":
        assert (where / command.argv[command.argv.index("-o") + 1]).stat().st_size > 10_000
    elif command.subcommand == "dataset check":
        assert "5 images" in out
