"""setup.py — builds the one extension module `pipec._C` from csrc/.

What it compiles:
  - every csrc/**/*.c with the host C compiler (C11, -O2 -Wall -Wextra);
  - when CUDA is on, every csrc/**/*.cu with nvcc into objects linked into the same module.

Environment:
  PIPEC_CUDA=auto|0|1  auto (default): CUDA on iff nvcc is found (never decided by whether a
                       GPU is present, so CI without a GPU still compiles the .cu files);
                       1 without nvcc is an error; 0 builds the CPU-only module.
  PIPEC_WERROR=1       every warning fails the build (C compiler and nvcc); CI sets it.
  CUDA_HOME            toolkit root; otherwise derived from `which nvcc`.
  NCCL_HOME            extra place to look for nccl.h / libnccl (else CUDA_HOME, /usr, ...).
  PIPEC_JOBS           parallel compile jobs (default: number of CPUs).

BLAS: the scipy-openblas32 wheel when it is importable (symbols prefixed `scipy_`,
-DPC_BLAS_SCIPY=1), else the system OpenBLAS (falling back to a system cblas/blas).
"""
import glob
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-std=c11", "-fvisibility=hidden"]
NVCC_FLAGS = [
    "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
    "-DPC_WITH_CUDA",
    "-gencode", "arch=compute_90,code=sm_90",
    "-gencode", "arch=compute_80,code=sm_80",
    "-I" + CSRC,
]


def _env_flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _jobs():
    try:
        return max(1, int(os.environ.get("PIPEC_JOBS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _sources(pattern):
    """Sorted repository-relative paths under csrc/ matching pattern (recursive)."""
    return sorted(os.path.relpath(p, ROOT)
                  for p in glob.glob(os.path.join(ROOT, CSRC, "**", pattern), recursive=True))


# ---- CUDA discovery ----

def _find_cuda():
    """(cuda_home, nvcc path) or None. Raises when PIPEC_CUDA=1 and nvcc is missing."""
    mode = os.environ.get("PIPEC_CUDA", "auto").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return None
    if mode not in ("1", "on", "true", "yes", "auto", ""):
        raise SystemExit(f"setup.py: PIPEC_CUDA must be auto, 0 or 1 (got {mode!r})")
    nvcc = None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        nvcc = os.path.join(home, "bin", "nvcc")
    if nvcc is None:
        nvcc = shutil.which("nvcc")
        if nvcc is not None:
            home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if nvcc is None:
        if mode == "auto" or mode == "":
            return None
        raise SystemExit("setup.py: PIPEC_CUDA=1 but nvcc was not found "
                         "(put it on PATH or set CUDA_HOME)")
    return home, nvcc


def _cuda_libdir(home):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
        d = os.path.join(home, sub)
        if os.path.isfile(os.path.join(d, "libcudart_static.a")):
            return d
    return os.path.join(home, "lib64")


def _find_nccl(home):
    """(include dir, lib dir) when nccl.h and libnccl are both found, else None."""
    roots = [os.environ.get("NCCL_HOME"), home, "/usr", "/usr/local"]
    incs, libs = [], []
    for r in roots:
        if not r:
            continue
        incs.append(os.path.join(r, "include"))
        libs += [os.path.join(r, "lib64"), os.path.join(r, "lib"),
                 os.path.join(r, "lib", "x86_64-linux-gnu")]
    inc = next((d for d in incs if os.path.isfile(os.path.join(d, "nccl.h"))), None)
    lib = next((d for d in libs if glob.glob(os.path.join(d, "libnccl.so*"))), None)
    if inc is None or lib is None:
        return None
    return inc, lib


# ---- BLAS discovery ----

def _find_blas():
    """dict(include_dirs, library_dirs, libraries, extra_link_args, define_macros)."""
    try:
        import scipy_openblas32
        inc = scipy_openblas32.get_include_dir()
        lib = scipy_openblas32.get_lib_dir()
        return dict(include_dirs=[inc], library_dirs=[lib], libraries=["scipy_openblas"],
                    extra_link_args=["-Wl,-rpath," + lib],
                    define_macros=[("PC_BLAS_SCIPY", "1")])
    except ImportError:
        pass
    inc_candidates = ["/usr/include/x86_64-linux-gnu", "/usr/include/x86_64-linux-gnu/openblas-pthread",
                      "/usr/include/openblas", "/usr/local/include", "/usr/include"]
    inc = next((d for d in inc_candidates if os.path.isfile(os.path.join(d, "cblas.h"))), None)
    if inc is None:
        raise SystemExit("setup.py: no BLAS found: `pip install scipy-openblas32`, or install "
                         "the system OpenBLAS (Debian/Ubuntu: apt-get install libopenblas-dev)")
    lib_dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/openblas-pthread",
                "/usr/lib64", "/usr/lib", "/usr/local/lib"]

    def has(name):
        return next((d for d in lib_dirs if glob.glob(os.path.join(d, f"lib{name}.so*"))), None)

    for name in ("openblas", "cblas", "blas"):
        d = has(name)
        if d is not None:
            return dict(include_dirs=[] if inc == "/usr/include" else [inc], library_dirs=[d],
                        libraries=[name], extra_link_args=[], define_macros=[])
    raise SystemExit(f"setup.py: found {inc}/cblas.h but no libopenblas/libcblas/libblas")


def _numpy_include():
    try:
        import numpy
    except ImportError:
        raise SystemExit("setup.py: NumPy is needed to build pipec._C (the bindings use the "
                         "NumPy C API): pip install numpy")
    return numpy.get_include()


# ---- build_ext with nvcc and parallel C compiles ----

class BuildExt(build_ext):
    """build_ext that compiles .cu files with nvcc, links them into the extension, compiles
    the C files in parallel, and turns warnings into errors under PIPEC_WERROR=1."""

    def build_extension(self, ext):
        cuda = getattr(ext, "pipec_cuda", None)
        werror = _env_flag("PIPEC_WERROR")
        self._force_on_config_change(ext, cuda)
        if werror:
            ext.extra_compile_args = list(ext.extra_compile_args) + ["-Werror"]
        if cuda is not None:
            objs = self._compile_cuda(ext, cuda, werror)
            ext.extra_objects = list(ext.extra_objects) + objs
            # cudart_static and the nvcc objects need the C++ runtime.
            if "stdc++" not in ext.libraries:
                ext.libraries = list(ext.libraries) + ["stdc++"]
        self._parallelise_compiler()
        super().build_extension(ext)

    def _persistent_dir(self):
        """build/pipec-<interpreter tag>: survives between builds, unlike the temporary
        build_temp of an editable pip install, so nvcc objects are reused when up to date."""
        return os.path.join(ROOT, "build", "pipec-" + sys.implementation.cache_tag)

    def _force_on_config_change(self, ext, cuda):
        """Rebuild everything when the configuration (CUDA on/off, BLAS, toolchain) changed
        since the last build: timestamps alone would keep stale objects. -Werror is left out:
        it changes no object, and CI builds from a fresh clone."""
        stamp = os.path.join(self._persistent_dir(), "config.txt")
        config = repr((sorted(map(str, ext.define_macros)), ext.libraries, ext.library_dirs,
                       ext.include_dirs, cuda and cuda["nvcc"], sys.version))
        old = None
        if os.path.exists(stamp):
            with open(stamp) as f:
                old = f.read()
        if old != config:
            self.force = True
            os.makedirs(os.path.dirname(stamp), exist_ok=True)
            with open(stamp, "w") as f:
                f.write(config)

    def _parallelise_compiler(self):
        """Make self.compiler.compile run its per-file _compile calls on a thread pool."""
        cc = self.compiler
        if getattr(cc, "_pipec_parallel", False):
            return
        jobs = _jobs()

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                    extra_preargs=None, extra_postargs=None, depends=None):
            macros, objects, extra_postargs, pp_opts, build = cc._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs)
            cc_args = cc._get_cc_args(pp_opts, debug, extra_preargs)

            def one(obj):
                if obj not in build:
                    return
                src, ext_ = build[obj]
                cc._compile(obj, src, ext_, cc_args, extra_postargs, pp_opts)

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, objects))
            return objects

        cc.compile = compile
        cc._pipec_parallel = True

    @staticmethod
    def _up_to_date(obj, dep, src):
        """obj is newer than src, setup.py and every header nvcc listed in dep (-MMD); without
        a dep file, newer than every header under csrc/."""
        if not os.path.exists(obj):
            return False
        deps = [src, os.path.join(ROOT, "setup.py")]
        if os.path.exists(dep):
            with open(dep) as f:
                text = f.read().replace("\\\n", " ")
            deps += text.partition(": ")[2].split()
        else:
            deps += glob.glob(os.path.join(ROOT, CSRC, "**", "*.h"), recursive=True)
        t = os.path.getmtime(obj)
        try:
            return all(os.path.getmtime(os.path.join(ROOT, d)) <= t for d in deps)
        except OSError:  # a listed header is gone
            return False

    def _compile_cuda(self, ext, cuda, werror):
        home, nvcc = cuda["home"], cuda["nvcc"]
        flags = list(NVCC_FLAGS) + ["-D%s=%s" % (k, v) if v is not None else "-D" + k
                                    for k, v in cuda["macros"] if k != "PC_WITH_CUDA"]
        flags += ["-I" + d for d in cuda["include_dirs"]]
        if werror:
            flags += ["-Werror", "all-warnings", "-Xcompiler", "-Werror"]
        out_dir = os.path.join(self._persistent_dir(), "cuda")
        srcs = cuda["sources"]
        objs = []
        jobs_list = []
        for src in srcs:
            obj = os.path.join(out_dir, os.path.splitext(src)[0] + ".o")
            dep = obj[:-2] + ".d"
            objs.append(obj)
            if not self.force and self._up_to_date(obj, dep, src):
                continue
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            jobs_list.append([nvcc] + flags + ["-MMD", "-MF", dep, "-c", src, "-o", obj])

        def run(cmd):
            print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            return cmd, proc.returncode, proc.stdout

        failed = []
        with ThreadPoolExecutor(max_workers=_jobs()) as pool:
            for cmd, rc, out in pool.map(run, jobs_list):
                if out:
                    sys.stdout.write(out)
                if rc != 0:
                    failed.append(cmd[-3])
        if failed:
            raise SystemExit("setup.py: nvcc failed on: " + ", ".join(failed))
        return [os.path.join(ROOT, o) if not os.path.isabs(o) else o for o in objs]


# ---- the extension ----

def _extension():
    c_sources = _sources("*.c")
    blas = _find_blas()
    include_dirs = [CSRC, _numpy_include()] + blas["include_dirs"]
    macros = list(blas["define_macros"]) + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    libraries = list(blas["libraries"]) + ["m", "pthread"]
    library_dirs = list(blas["library_dirs"])
    link_args = list(blas["extra_link_args"])

    cuda = _find_cuda()
    cuda_cfg = None
    if cuda is not None:
        home, nvcc = cuda
        libdir = _cuda_libdir(home)
        cuda_macros = [("PC_WITH_CUDA", None)]  # for the C files; NVCC_FLAGS has its own
        cuda_incs = [os.path.join(home, "include")]
        nccl = _find_nccl(home)
        if nccl is not None:
            cuda_macros.append(("PC_WITH_NCCL", None))
            if nccl[0] not in cuda_incs:
                cuda_incs.append(nccl[0])
        macros += cuda_macros
        include_dirs += [d for d in cuda_incs if d != "/usr/include"]
        library_dirs.append(libdir)
        link_args.append("-Wl,-rpath," + libdir)
        libraries += ["cudart_static", "cublas", "cublasLt", "rt", "dl"]
        if nccl is not None:
            if nccl[1] != libdir:
                library_dirs.append(nccl[1])
                link_args.append("-Wl,-rpath," + nccl[1])
            libraries.append("nccl")
        # nvcc finds the toolkit's own headers; pass only extra dirs, never the system ones
        # (an explicit -I/usr/include reorders the compiler's search and breaks C++ headers).
        extra_incs = [d for d in cuda_incs[1:] if d not in ("/usr/include", "/usr/local/include")]
        cuda_cfg = dict(home=home, nvcc=nvcc, sources=_sources("*.cu"),
                        macros=cuda_macros, include_dirs=extra_incs)
        print(f"setup.py: CUDA on ({nvcc}; NCCL {'on' if nccl else 'off'}; "
              f"{len(cuda_cfg['sources'])} .cu files)")
    else:
        print("setup.py: CUDA off")

    ext = Extension(
        "pipec._C",
        sources=c_sources,
        include_dirs=include_dirs,
        define_macros=macros,
        libraries=libraries,
        library_dirs=library_dirs,
        extra_compile_args=list(C_FLAGS),
        extra_link_args=link_args,
        depends=glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True),
        language="c",
    )
    ext.pipec_cuda = cuda_cfg
    return ext


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt},
)
