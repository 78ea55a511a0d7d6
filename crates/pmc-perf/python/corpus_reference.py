"""Reference corpus pipeline for `cargo xtask bench-corpus`: the way a Python user prepares
PMC JATS papers today — xml.etree.ElementTree, HF `tokenizers`, pyarrow — with the same
cleaning rules as pmc-corpus's `pmc-llama` preset (title, abstract, body paragraphs, markdown
headings, reference list / tables / figures / back matter dropped, citation groups removed,
formulas as [FORMULA], NFKC, whitespace, min 500 characters, exact and MinHash near-duplicate
removal on word 5-grams with numpy) and the same packing (documents joined with EOS, cut into
seq_len windows, zstd parquet with input_ids and doc_ids).

Prints one JSON line: seconds, input bytes, documents kept, sequences, peak RSS.

    python3 corpus_reference.py --input DIR --tokenizer tokenizer.json --out DIR [--seq-len 512]
"""

import argparse
import hashlib
import json
import os
import re
import sys
import time
import unicodedata
import xml.etree.ElementTree as ET

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from rss import peak_rss_bytes

SKIP = {"back", "sub-article", "response", "ref-list", "fn-group", "fn", "supplementary-material",
        "graphic", "inline-graphic", "media", "label", "object-id", "table", "table-wrap-foot",
        "attrib", "glossary", "ack", "sec-meta"}
FORMULA = {"inline-formula", "disp-formula", "math", "tex-math", "chem-struct"}
MARK_XREF = {"fn", "aff", "corresp", "author-notes", "table-fn"}
BLOCK = {"p", "sec", "title", "list", "list-item", "caption", "fig", "table-wrap", "disp-quote",
         "boxed-text", "def-list", "def-item", "term", "def"}
CITE = "\x00CITE\x00"


def local(tag):
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1] if isinstance(tag, str) else ""


def inline_text(el, out):
    """Text of an element's inline content: citations as a placeholder, formulas marked."""
    name = local(el.tag)
    if name in FORMULA:
        out.append(" [FORMULA] ")
    elif name == "xref" and el.get("ref-type") == "bibr":
        out.append(CITE)
    elif name == "xref" and el.get("ref-type") in MARK_XREF:
        pass
    elif name in SKIP or name in BLOCK:
        pass
    else:
        if el.text:
            out.append(el.text)
        for child in el:
            inline_text(child, out)
            if child.tail:
                out.append(child.tail)
        return
    # skipped / replaced element: content not kept
    return


def paragraphs(el, depth, blocks):
    """Walk block structure: headings, paragraphs; skip floats and back matter."""
    name = local(el.tag)
    if name in SKIP or name in ("fig", "table-wrap"):
        return
    if name == "sec" and el.get("sec-type") in ("supplementary-material", "display-objects"):
        return
    if name == "sec":
        depth += 1
    if name == "p":
        out = [el.text or ""]
        for child in el:
            if local(child.tag) in BLOCK:
                blocks.append(("p", "".join(out)))
                out = []
                paragraphs(child, depth, blocks)
            else:
                inline_text(child, out)
            if child.tail:
                out.append(child.tail)
        blocks.append(("p", "".join(out)))
        return
    if name == "title" and depth > 0:
        out = [el.text or ""]
        for child in el:
            inline_text(child, out)
            if child.tail:
                out.append(child.tail)
        blocks.append(("h%d" % depth, "".join(out)))
        return
    for child in el:
        paragraphs(child, depth, blocks)


C = re.escape(CITE)
CITE_GROUP = re.compile(r"(\s*)([\(\[]\s*)?" + C + r"(?:[\s,;–—-]*" + C + r")*(\s*[\)\]])?")


def render(kind, text):
    def remove(m):
        lead, opening, closing = m.group(1), m.group(2), m.group(3)
        if opening and closing:  # the brackets belong to the citation group
            return lead
        after = m.string[m.end():m.end() + 1]
        if not closing and after and after in ".,;:!?)]—–":
            lead = ""  # "ciliate [1]—an" -> "ciliate—an"
        return lead + (opening or "") + (closing or "")
    return " ".join(CITE_GROUP.sub(remove, text).split())


def clean(path):
    root = ET.parse(path).getroot()
    meta = root.find(".//front/article-meta")
    title = meta.find("./title-group/article-title") if meta is not None else None
    out = []
    if title is not None:
        out.append("# " + " ".join("".join(title.itertext()).split()))
    abstracts = [a for a in (meta.findall("./abstract") if meta is not None else [])
                 if (a.get("abstract-type") or "").lower() not in ("graphical", "teaser", "toc", "short", "web-summary")]
    if abstracts:
        out.append("## Abstract")
        for a in abstracts:
            blocks = []
            for child in a:
                paragraphs(child, 0, blocks)
            out.extend(render(k, t) for k, t in blocks)
    body = root.find("./body")
    def article_id(kind):
        el = meta.find("./article-id[@pub-id-type='%s']" % kind) if meta is not None else None
        return el.text.strip() if el is not None and el.text else None
    pmc, pmid, doi = article_id("pmc"), article_id("pmid"), article_id("doi")
    doc_id = ("PMC" + pmc.removeprefix("PMC")) if pmc else ("PMID" + pmid) if pmid else doi or os.path.basename(path).split(".")[0]
    if body is None:
        return doc_id, None
    blocks = []
    paragraphs(body, 0, blocks)
    if not any(k == "p" and t.strip() for k, t in blocks):
        return doc_id, None
    for kind, text in blocks:
        line = render(kind, text)
        if not line:
            continue
        if kind.startswith("h"):
            line = "#" * (int(kind[1:]) + 1) + " " + line
        out.append(line)
    text = "\n\n".join(b for b in out if b.strip())
    text = unicodedata.normalize("NFKC", text)
    return doc_id, normalise(text)


def normalise(text):
    blocks = []
    for b in text.split("\n\n"):
        line = re.sub(r" (?=[.,;:)\]?!])", "", " ".join(b.split()))
        line = line.replace(" ()", "").replace(" []", "").replace("()", "").replace("[]", "")
        if line:
            blocks.append(line)
    return "\n\n".join(blocks)


PERM = 128
rng = np.random.RandomState(1)
A = rng.randint(1, 2**61 - 1, size=PERM, dtype=np.uint64)
B = rng.randint(0, 2**61 - 1, size=PERM, dtype=np.uint64)


def minhash(text):
    words = [w.lower() for w in re.split(r"\W+", text) if w]
    shingles = {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}
    hs = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles],
                  dtype=np.uint64)
    return (np.outer(hs, A) + B).min(axis=0)  # wrapping uint64 arithmetic: a universal-ish family


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, nargs="+")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()
    start = time.perf_counter()
    files = []
    for root in args.input:
        for d, _, names in sorted(os.walk(root)):
            files += [os.path.join(d, n) for n in sorted(names) if n.endswith((".xml", ".nxml"))]
    in_bytes = sum(os.path.getsize(f) for f in files)
    tok = Tokenizer.from_file(args.tokenizer)
    eos = tok.token_to_id("</s>")
    if eos is None:
        eos = tok.token_to_id("<|endoftext|>")
    seen_ids, seen_hashes, bands, sigs = set(), set(), {}, []
    kept_ids, kept_texts = [], []
    for f in files:
        try:
            doc_id, text = clean(f)
        except ET.ParseError:
            continue
        if text is None or len(text) < 500:
            continue
        words = [w.lower() for w in re.split(r"\W+", text) if w]
        h = hashlib.sha256(" ".join(words).encode()).digest()[:16]
        if doc_id in seen_ids or h in seen_hashes:
            continue
        sig = minhash(text)
        keys = [(b, sig[b * 8:(b + 1) * 8].tobytes()) for b in range(16)]
        dup = False
        for k in keys:
            for j in bands.get(k, ()):
                if (sigs[j] == sig).mean() >= 0.8:
                    dup = True
                    break
            if dup:
                break
        if dup:
            continue
        seen_ids.add(doc_id)
        seen_hashes.add(h)
        for k in keys:
            bands.setdefault(k, []).append(len(sigs))
        sigs.append(sig)
        kept_ids.append(doc_id)
        kept_texts.append(text)
    encodings = tok.encode_batch(kept_texts, add_special_tokens=False)
    buf, buf_docs, seqs, seq_docs = [], [], [], []
    for doc_id, enc in zip(kept_ids, encodings):
        ids = enc.ids + [eos]
        pos = 0
        while pos < len(ids):
            if not buf_docs or buf_docs[-1] != doc_id:
                buf_docs.append(doc_id)
            take = ids[pos:pos + args.seq_len - len(buf)]
            buf.extend(take)
            pos += len(take)
            if len(buf) == args.seq_len:
                seqs.append(buf)
                seq_docs.append(buf_docs)
                buf, buf_docs = [], []
    os.makedirs(args.out, exist_ok=True)
    table = pa.table({"input_ids": pa.array(seqs, type=pa.list_(pa.uint32())),
                      "doc_ids": pa.array(seq_docs, type=pa.list_(pa.string()))})
    pq.write_table(table, os.path.join(args.out, "tokens-00000.parquet"), compression="zstd", row_group_size=1024)
    text_table = pa.table({"id": kept_ids, "text": kept_texts})
    pq.write_table(text_table, os.path.join(args.out, "text-00000.parquet"), compression="zstd")
    seconds = time.perf_counter() - start
    rss = peak_rss_bytes()
    print(json.dumps({"seconds": seconds, "input_bytes": in_bytes, "documents": len(kept_ids),
                      "sequences": len(seqs), "peak_rss": rss, "threads": os.environ.get("RAYON_NUM_THREADS")}))


if __name__ == "__main__":
    sys.exit(main())
