"""Assertions shared by tests."""


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0, "a user mistake must exit non-zero"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
