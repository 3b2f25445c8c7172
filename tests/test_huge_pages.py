"""Huge pages for large host allocations: asked for only where they apply, and really given to a restarted
command (fewer page faults for the same memory), with its arguments, process id and output intact."""

import os
import subprocess
import sys
import textwrap

import pytest

from gcn_jax import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = {"mode": "madvise", "glibc": (2, 36)}


def test_the_tunable_is_added_to_the_users_own_and_theirs_wins():
    assert huge_pages.with_huge_pages("") == "glibc.malloc.hugetlb=1"
    assert huge_pages.with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages.with_huge_pages("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
    assert huge_pages.with_huge_pages("glibc.malloc.hugetlb=2:x.y=1") == "glibc.malloc.hugetlb=2:x.y=1"


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_it_applies_only_with_madvise_mode_a_recent_glibc_and_no_opt_out():
    assert huge_pages.applies({}, **HERE)
    assert not huge_pages.applies({}, mode="always", glibc=(2, 36))  # every large mapping gets them anyway
    assert not huge_pages.applies({}, mode="never", glibc=(2, 36))
    assert not huge_pages.applies({}, mode=None, glibc=(2, 36))  # no transparent huge pages in this kernel
    assert not huge_pages.applies({}, mode="madvise", glibc=(2, 34))  # no glibc.malloc.hugetlb yet
    assert not huge_pages.applies({}, mode="madvise", glibc=None)  # musl and others
    assert not huge_pages.applies({huge_pages.OPT_OUT: "0"}, **HERE)
    assert not huge_pages.applies({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **HERE)
    assert huge_pages.applies({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", huge_pages.OPT_OUT: "1"}, **HERE)


PROBE = textwrap.dedent("""
    import ctypes, os, resource, sys
    from gcn_jax import huge_pages
    huge_pages.restart_with_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    n = 256 * 2 ** 20  # as large as XLA's per-step buffers, well above glibc's mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(libc.malloc(n), 1, n)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(os.getpid(), faults, n // 4096, os.environ.get("GLIBC_TUNABLES"), *sys.argv[1:], sep="|")
""")


def _probe(tmp_path, **env):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.Popen([sys.executable, str(script), "--flag=a b", "c"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": ROOT, **env})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    pid, faults, pages, tunables, *args = out.strip().split("|")
    assert int(pid) == proc.pid and args == ["--flag=a b", "c"]  # the same process, the same command line
    return int(faults), int(pages), tunables


@pytest.mark.skipif(not huge_pages.applies({}), reason="no transparent huge pages on madvise with glibc >= 2.35")
def test_a_restarted_command_faults_its_large_allocations_in_as_huge_pages(tmp_path):
    faults, pages, tunables = _probe(tmp_path, GLIBC_TUNABLES="", **{huge_pages.OPT_OUT: "1"})
    assert tunables == "glibc.malloc.hugetlb=1"
    assert faults < pages / 8, (faults, pages)  # 2 MiB pages: ~130 faults for 65536 pages of 4 KiB
    faults, pages, tunables = _probe(tmp_path, GLIBC_TUNABLES="", **{huge_pages.OPT_OUT: "0"})
    assert tunables == "" and faults >= pages, (faults, pages)  # not restarted: one fault per 4 KiB page


@pytest.mark.skipif(not huge_pages.applies({}), reason="no transparent huge pages on madvise with glibc >= 2.35")
def test_the_command_lines_start_with_huge_pages(tmp_path):
    script = tmp_path / "command.py"
    script.write_text("import os\nfrom gcn_jax import cli\n\n"
                      "cli.run(lambda argv: print(os.environ.get('GLIBC_TUNABLES')))\n")
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, text=True, capture_output=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT, "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
