"""trainframe.progress: the same calls draw a bar when shown and do nothing otherwise."""

from trainframe.progress import Progress


def test_a_shown_bar_renders_its_fields_and_a_hidden_one_only_prints(capsys):
    with Progress(True, "{task.fields[rate]:.0f} docs/s", transient=False) as bar:
        task = bar.task("tokenizing", 4, rate=0.0)
        bar.update(task, advance=3, rate=7.0)
        bar.print("a line above")
    out = capsys.readouterr().out
    assert "a line above" in out and "tokenizing" in out and "3/4 7 docs/s" in out
    hidden = Progress(False, "{task.fields[rate]} docs/s")
    with hidden:
        task = hidden.task("tokenizing", 4, rate=0.0)
        hidden.update(task, advance=3, rate=7.0)
        hidden.print("a plain line")
    assert task is None and capsys.readouterr().out == "a plain line\n"
