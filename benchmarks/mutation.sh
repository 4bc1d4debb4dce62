#!/usr/bin/env bash
# Mutation testing of titk/train/: mutmut changes the training code one small edit at a time and runs the
# fast training tests against each change; a mutant that survives is a rule no test holds. Time-boxed: the
# run stops after MINUTES (default 10) and reports what it checked by then (cheapest tests first).
#
#   benchmarks/mutation.sh [MINUTES]        results in $TITK_MUTATION_DIR (default: a new temporary folder)
#
# mutmut is installed into the project's venv (or $PYTHON's environment) when missing; it is not part of
# the test suite. The run works on a copy of the repository, so the working tree is never touched.
set -euo pipefail

minutes=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
bin=$(dirname "$python")
work=${TITK_MUTATION_DIR:-$(mktemp -d -t titk-mutation-XXXXXX)}
tests=(tests/test_train_rules.py tests/test_differential.py tests/test_schedule_plan.py)

"$python" -c "import mutmut" 2>/dev/null || "$python" -m pip install -q "mutmut>=3.3,<4"

mkdir -p "$work"
tar -C "$root" --exclude=__pycache__ -cf - titk tests experiments pyproject.toml | tar -C "$work" -xf -
{
  echo
  echo "[tool.mutmut]"
  echo 'source_paths = ["titk/"]'
  echo 'only_mutate = ["titk/train/*"]'
  echo 'also_copy = ["experiments/"]'
  printf 'pytest_add_cli_args_test_selection = [%s]\n' "$(printf '"%s", ' "${tests[@]}" | sed 's/, $//')"
  # The FLOP count of full-size SD1.5 takes seconds and holds no training rule.
  echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "--deselect", "tests/test_schedule_plan.py::test_plan_flops_match_the_measured_sd15_figure"]'
  echo 'use_git_change_detection = false'
} >>"$work/pyproject.toml"

cd "$work"
echo "mutation run in $work, stopped after $minutes minutes"
# SIGINT lets mutmut record the mutants it finished before stopping.
timeout -s INT "${minutes}m" "$bin/mutmut" run --max-children "${TITK_MUTATION_CHILDREN:-2}" || true
"$bin/mutmut" results --all true >results.txt 2>/dev/null || true
echo
echo "status counts (titk/train/):"
sed -n 's/.*: //p' results.txt | sort | uniq -c | sort -rn
echo
echo "survivors (first 20; 'mutmut show NAME' in $work gives each diff):"
grep ': survived' results.txt | head -20 | sed 's/: survived//'
