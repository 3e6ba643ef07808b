"""``spmlbench cite``: the BibTeX of each method (each paper once) and of the suite, from citations.toml."""

from __future__ import annotations

import re

from spmlbench.data.citations import bibtex, cited_losses, load_citations


def keys(text: str) -> list[str]:
    return re.findall(r"^@\w+\{([^,]+),", text, flags=re.M)


def test_every_builtin_loss_has_bibtex() -> None:
    from spmlbench.losses import list_losses

    assert sorted(cited_losses()) == sorted(list_losses())
    cites = load_citations()
    for name in list_losses():
        entry = cites.papers[cites.losses[name][0]]
        year = re.search(r"year\s*=\s*\{(\d{4})\}", entry)
        from spmlbench.losses import loss_info

        assert year and int(year.group(1)) == loss_info(name).year, name  # the registry's year


def test_cite_named_losses_each_paper_once_then_the_suite(cli) -> None:
    res = cli("cite", "gr,an", "role")
    assert res.code == 0
    assert keys(res.out) == ["chen2024", "cole2021", "spmlbench"]  # an and role share Cole et al. 2021
    assert "Generalized Robust Loss" in res.out and "Mac Aodha, Oisin" in res.out
    assert keys(cli("cite", "aevlp", "--no-suite").out) == ["tran2025", "chen2024"]


def test_cite_an_experiment_and_the_default(cli) -> None:
    table1 = keys(cli("cite", "--experiment", "table1").out)
    assert table1[0] == "cole2021" and table1[-1] == "spmlbench" and "chen2024" in table1
    assert len(table1) == len(set(table1))
    assert keys(cli("cite").out) == keys("\n".join(bibtex(cited_losses())))


def test_cite_a_plugin_from_its_text_and_an_unknown_name_fails(cli, restore_registry) -> None:
    res = cli("cite", "an_weighted", "--plugin", "examples/my_loss.py", "--no-suite")
    assert res.code == 0 and keys(res.out) == ["an_weighted"] and "@misc{an_weighted" in res.out
    bad = cli("cite", "nope")
    assert bad.code == 2 and "nope" in bad.err


def test_a_head_with_any_loss_cites_the_heads_paper_then_the_losss(cli) -> None:
    res = cli("cite", "boostlu_an,an", "--no-suite")  # BoostLU's head (Kim 2023) with AN (Cole 2021), each once
    assert res.code == 0 and keys(res.out) == ["kim2023", "cole2021"], res.out
    res = cli("cite", "attn_pool_gr", "--no-suite")  # a head no paper holds: its citation text, then GR's paper
    assert res.code == 0 and keys(res.out) == ["attn_pool", "chen2024"], res.out
    assert "spmlbench example head (docs/adding-a-method.md)" in res.out
    assert set(load_citations().heads) == {"boostlu", "mime", "vib", "smile"}
