"The wheel holds the library only (no tests/), and a non-editable install imports from another directory."
import subprocess, sys, zipfile
from conftest import run, ROOT

def test_wheel_contents_and_plain_install(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path/"dist"), str(ROOT)], timeout=300)
    wheel, = (tmp_path/"dist").glob("iclmsr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("tests/")], names
    assert "iclmsr/__init__.py" in names and "iclmsr/utils.py" in names and "iclmsr/cli.py" in names
    meta = next(n for n in names if n.endswith("METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    assert 'faiss-gpu==1.15.1; platform_system == "Linux" and platform_machine == "x86_64"' in metadata
    assert "Requires-Dist: torch" in metadata and "Requires-Dist: anywidget" in metadata
    # install the wheel (not editable) into a target folder and import it from elsewhere
    target = tmp_path/"site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)], timeout=300)
    p = run([sys.executable, "-c", "import iclmsr, iclmsr.utils; print(iclmsr.__version__, iclmsr.__file__)"],
            cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    version, where = p.stdout.split()
    assert where.startswith(str(target)), where
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT/"settings.ini")
    assert version == cfg["DEFAULT"]["version"]
