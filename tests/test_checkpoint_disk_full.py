"""A write that runs out of space leaves the previous checkpoint intact. The space limit is real: the saving process
runs with RLIMIT_FSIZE set below the checkpoint's size, so the kernel refuses the write (EFBIG) part way through."""
import subprocess, sys, textwrap
import torch

def test_full_disk_keeps_previous_checkpoint(tmp_path):
    from iclmsr.checkpoint import atomic_save
    ck = tmp_path/"last.pt"
    atomic_save({"step": 1, "w": torch.arange(10.)}, ck)
    before = ck.read_bytes()
    code = textwrap.dedent(f"""
        import resource, signal, torch, sys
        from iclmsr.checkpoint import atomic_save
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try: atomic_save({{"step": 2, "w": torch.randn(1_000_000)}}, {str(ck)!r})
        except OSError as e: print("ERR", e); sys.exit(3)
        sys.exit(0)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "previous checkpoint, if any, is intact" in p.stdout
    assert ck.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"]   # no temporary file left
    assert torch.load(ck, weights_only=True)["step"] == 1
