#!/usr/bin/env python3
"""Build datasets/pmc-oa: a small bundle of real open-access PLOS papers in JATS XML.

usage: python3 datasets/pmc-oa/bundle.py [SHARED_PLOS_DIR]   (default ../shared/data/pmc-jats/plos)

Picks biomedical research and review articles (no corrections or retractions) licensed CC-BY
or CC0, with 12k-60k characters of body text, until the bundle holds about 2.5 MB of
compressed XML; writes them as `papers.tar.gz` (a PMC-OA-style bundle that `prepare-corpus`
reads; sorted members, fixed timestamps, so the same inputs give the same bytes) and
`ATTRIBUTION.md` with each paper's DOI, title, journal, year and licence.
"""
import gzip
import io
import os
import sys
import tarfile
import xml.etree.ElementTree as ET

XLINK = "{http://www.w3.org/1999/xlink}href"
# Journals that publish biomedicine; PLOS ONE is mixed, so its papers are also screened by words.
JOURNALS = ("pmed", "ppat", "pntd", "pgen", "pbio", "pcbi", "pone")
MEDICAL_WORDS = (
    "patient", "clinical", "disease", "infection", "cancer", "tumor", "virus", "viral",
    "mortality", "therapy", "treatment", "cell", "gene", "protein", "immune", "health",
    "malaria", "tuberculosis", "hiv", "drug", "trial", "brain", "blood", "renal",
)
BUDGET_BYTES = 2_500_000


def text(node):
    return " ".join("".join(node.itertext()).split()) if node is not None else ""


def licence(root):
    lic = root.find(".//permissions/license")
    href = (lic.get(XLINK) or "") if lic is not None else ""
    words = text(lic).lower()
    if "publicdomain/zero" in href or "free of all copyright" in words:
        return "CC0 1.0"
    if "licenses/by/" in href:
        return "CC BY " + href.rstrip("/").rsplit("/", 1)[-1]
    if "creative commons attribution license" in words:
        return "CC BY 2.5" if "2.5" in words else "CC BY"
    return None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "shared", "data", "pmc-jats", "plos")
    here = os.path.dirname(os.path.abspath(__file__))
    chosen, total = [], 0
    for name in sorted(os.listdir(src)):
        if not name.endswith(".xml") or not any(f"journal.{j}." in name for j in JOURNALS):
            continue
        raw = open(os.path.join(src, name), "rb").read()
        root = ET.fromstring(raw)
        kind = root.get("article-type", "")
        title = text(root.find(".//title-group/article-title"))
        body = len(text(root.find(".//body")))
        lic = licence(root)
        if lic is None or kind in ("correction", "retraction") or title.startswith(("Correction", "Retraction")):
            continue
        if not 12_000 <= body <= 60_000:
            continue
        if "journal.pone." in name and not any(w in title.lower() for w in MEDICAL_WORDS):
            continue
        packed = len(gzip.compress(raw, 9))
        if total + packed > BUDGET_BYTES:
            break
        total += packed
        year = root.find(".//pub-date/year")
        chosen.append({
            "file": name,
            "raw": raw,
            "doi": text(root.find(".//article-id[@pub-id-type='doi']")),
            "title": title,
            "journal": text(root.find(".//journal-title")) or text(root.find(".//journal-id[@journal-id-type='nlm-ta']")),
            "year": year.text if year is not None else "",
            "licence": lic,
        })
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for paper in chosen:
                info = tarfile.TarInfo("papers/" + paper["file"])
                info.size, info.mtime, info.mode = len(paper["raw"]), 0, 0o644
                tar.addfile(info, io.BytesIO(paper["raw"]))
    open(os.path.join(here, "papers.tar.gz"), "wb").write(buf.getvalue())
    with open(os.path.join(here, "ATTRIBUTION.md"), "w") as out:
        out.write(
            "# Attribution: the bundled papers\n\n"
            f"`papers.tar.gz` holds {len(chosen)} open-access articles published by PLOS, in the JATS XML\n"
            "that PLOS and PubMed Central distribute, unchanged. Each is licensed under Creative Commons\n"
            "Attribution (CC BY) or dedicated to the public domain (CC0), as its own `<license>` element\n"
            "says; they are copied here under those terms, as the default data of `cargo xtask pretrain`.\n"
            "The selection is made by `bundle.py` from the papers in `../shared/data/pmc-jats/plos`.\n\n"
            "| # | DOI | Title | Journal | Year | Licence |\n|---|---|---|---|---|---|\n")
        for i, p in enumerate(chosen, 1):
            title = p["title"].replace("|", "\\|")
            out.write(f"| {i} | [{p['doi']}](https://doi.org/{p['doi']}) | {title} | {p['journal']} | {p['year']} | {p['licence']} |\n")
    print(f"{len(chosen)} papers, {len(buf.getvalue()) / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
