"""Search over knowledge/ and the reference sources ranks the right place first; reads stay confined."""

import pytest

from avo.knowledge import (
    KNOWLEDGE_DIR,
    Index,
    PathError,
    confined_path,
    knowledge_index,
    read_text,
    reference_roots,
    source_index,
)


@pytest.mark.parametrize("query, path, heading", [
    ("setmaxnreg register split producer warp group", "hopper.md", "Registers"),
    ("exp2 MUFU throughput softmax bottleneck", "hopper.md", "Why softmax's exp2 is the bottleneck"),
    ("shared memory 227 KB limit", "hopper.md", "Shared memory"),
    ("online softmax rescale log-sum-exp", "flash_attention.md", "Online softmax"),
    ("causal longest-first scheduling", "flash_attention.md", "Scheduling and masking"),
    ("tcgen05 TMEM tensor memory", "blackwell.md", "What is new"),
    ("const_expr range_constexpr trace time", "cute_dsl.md", "Compile-time vs run-time"),
    ("commit rule incumbent geomean", "harness.md", "The commit rule"),
    ("spills stack_frame_bytes compile report", "harness.md", "compile()"),
    ("FA4 cuDNN H200 measured TFLOPS", "tried.md", "2026-11-22 FA4 and cuDNN on H200"),
    ("tensor pipe stalls ncu profile", "tools.md", "profile: Nsight Compute on one config"),
    ("steady state main loop backward branch sass", "tools.md", "sass, ptx and instruction_mix"),
])
def test_knowledge_search_ranks_the_right_section_first(query, path, heading):
    hit = knowledge_index().search(query, k=3)[0]
    assert (hit.path, hit.heading.startswith(heading)) == (path, True), hit
    assert hit.snippet and hit.score > 0


def test_bm25_prefers_rare_terms_and_splits_identifiers(tmp_path):
    (tmp_path / "a.md").write_text("# Alpha\nthe the the kernel kernel kernel\n# Beta\nwarpgroup_reg_alloc once\n")
    (tmp_path / "b.md").write_text("# Gamma\nthe kernel uses registers\n")
    ix = Index.from_markdown(tmp_path)
    assert [(d[0], d[1]) for d in ix.docs] == [("a.md", "Alpha"), ("a.md", "Beta"), ("b.md", "Gamma")]
    assert ix.search("reg alloc")[0].heading == "Beta"  # found through the identifier's parts
    assert ix.search("registers kernel")[0].heading == "Gamma"  # the rare term decides
    assert ix.search("zzz") == []
    assert ix.search("kernel", under="b.md")[0].path == "b.md"


def test_knowledge_index_is_rebuilt_when_a_file_changes(tmp_path):
    note = tmp_path / "tried.md"
    note.write_text("# Log\nnothing yet\n")
    assert knowledge_index(tmp_path).search("pingpong") == []
    note.write_text("# Log\npingpong with two warp groups: +3%\n")
    assert knowledge_index(tmp_path).search("pingpong")[0].path == "tried.md"


def test_reads_are_confined_to_their_roots(tmp_path):
    roots = {"": KNOWLEDGE_DIR}
    assert confined_path(roots, "hopper.md") == KNOWLEDGE_DIR / "hopper.md"
    for bad in ("../README.md", "/etc/passwd", "~/x", "a/../../README.md", "", "missing.md"):
        with pytest.raises(PathError):
            confined_path(roots, bad)
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "root" / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PathError, match="outside"):
        confined_path({"lib": tmp_path / "root"}, "lib/link.txt")
    with pytest.raises(PathError, match="not under"):
        confined_path({"lib": tmp_path / "root"}, "other/x.py")
    text = read_text(KNOWLEDGE_DIR / "hopper.md", start_line=1, max_lines=3)
    assert text.splitlines()[0].startswith("    1  # Hopper") and "more lines; call again with start_line=4" in text


def test_reference_search_finds_fa4_and_cute_dsl_sources():
    roots = reference_roots()
    if "flash_attn/cute" not in roots or "cutlass" not in roots:
        pytest.skip("flash-attn-4 or the CuTe DSL sources are not installed")
    ix = source_index(roots)
    hit = ix.search("ex2_emulation poly_degree", under="flash_attn/cute")[0]
    assert hit.path == "flash_attn/cute/utils.py"
    assert "ex2_emulation" in read_text(confined_path(roots, hit.path), hit.line, 40)
    hit = ix.search("PipelineTmaAsync producer_acquire consumer_wait", under="cutlass/pipeline")[0]
    assert hit.path.startswith("cutlass/pipeline/") and hit.path.endswith(".py")
