"""test_stubs.py — pipec/_C.pyi stays in step with the extension module pipec._C.

The stub is read with `ast` (no type checker needed) and compared, both ways, with what the
built module really holds:
  1. every public module attribute of pipec._C has a declaration in the stub;
  2. every public method/property of each stubbed class (Tensor first of all, including the
     methods pipec/_tensor.py installs on it) and Tensor's operator dunders are declared;
  3. the stub declares nothing, public or private, that the runtime module lacks.
Stub-only type aliases (`_Name = ...` at module level) are allowed but must be private.
Names that exist only in a CUDA build are listed in CUDA_ONLY (cuda_py.c); NCCL support
changes no names (only the accepted `backend` of Comm), so it needs no list.
"""
import ast
import pathlib

import pytest

import pipec
from pipec import _C

STUB = pathlib.Path(pipec.__file__).with_name("_C.pyi")

# cuda_py.c defines these only under #ifdef PC_WITH_CUDA (a CPU-only build has just
# _cuda_is_available and _cuda_device_count). The stub declares them all.
CUDA_ONLY = frozenset({
    "_cuda_current_device", "_cuda_set_device", "_cuda_synchronize",
    "_cuda_get_device_properties", "_cuda_mem_get_info", "_cuda_compute_stream",
    "_cuda_comm_stream", "_cuda_current_stream", "_cuda_set_stream", "_cuda_stream_create",
    "_cuda_stream_destroy", "_cuda_stream_query", "_cuda_stream_synchronize",
    "_cuda_stream_wait_event", "_cuda_stream_wait_stream", "_cuda_stream_priority_range",
    "_cuda_event_create", "_cuda_event_destroy", "_cuda_event_record", "_cuda_event_query",
    "_cuda_event_synchronize", "_cuda_event_elapsed_time", "_cuda_memory_stats",
    "_cuda_reset_peak_memory_stats", "_cuda_empty_cache", "_cuda_record_stream",
    "_cuda_set_allow_tf32", "_cuda_get_allow_tf32",
})

# Dunders in vars(pipec._C.Tensor) that the stub leaves out on purpose.
TENSOR_DUNDERS_NOT_STUBBED = {
    "__doc__", "__module__", "__dict__",  # bookkeeping, not API
    "__new__",      # tensor_new always raises: tensors come from factories
    "__delitem__",  # comes with mp_ass_subscript; always raises TypeError
    "__rpow__",     # _tensor.py installs it only to raise TypeError (number ** tensor)
}


# ---- reading the stub ----

def declarations(body, where):
    """(declared, aliases) of a module or class body: declared = names of def / class /
    annotated variables; aliases = names bound by plain assignment (type aliases)."""
    declared, aliases = set(), set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
        elif isinstance(node, ast.Assign):
            aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)):
            pass
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            pass  # docstring or `...`
        else:  # e.g. `if sys.version_info`: teach this test about it rather than skip names
            raise AssertionError(f"{where}: unsupported statement at line {node.lineno}: "
                                 f"{ast.dump(node)[:80]}")
    return declared, aliases


def stub_classes(tree):
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def is_public(name):
    return not name.startswith("_")


# ---- the comparisons (kept separate so that test_checks_can_fail can drive them) ----

def module_problems(tree, module):
    """Mismatches between the stub's module level and the runtime module, as strings."""
    declared, aliases = declarations(tree.body, "module")
    runtime = set(dir(module))
    cuda_absent = set() if module._cuda_built else set(CUDA_ONLY)
    problems = []
    for name in sorted(n for n in runtime if is_public(n)):
        if name not in declared:
            problems.append(f"pipec._C.{name} has no declaration in the stub")
    for name in sorted(declared - runtime - cuda_absent):
        problems.append(f"the stub declares {name}, which pipec._C does not have")
    for name in sorted(aliases):
        if is_public(name) or name in runtime or name in declared:
            problems.append(f"stub alias {name} must be a private, stub-only name")
    return problems


def class_problems(tree, module):
    """Mismatches between each stubbed class and the runtime class of the same name."""
    problems = []
    for cname, node in sorted(stub_classes(tree).items()):
        cls = getattr(module, cname, None)
        if not isinstance(cls, type):
            continue  # reported by module_problems
        declared, aliases = declarations(node.body, f"class {cname}")
        own = set(vars(cls))
        wanted = {n for n in own if is_public(n)}
        if cls is module.Tensor:
            wanted |= {n for n in own if n.startswith("__") and n.endswith("__")}
            wanted -= TENSOR_DUNDERS_NOT_STUBBED
        for name in sorted(wanted - declared):
            problems.append(f"{cname}.{name} has no declaration in the stub")
        for name in sorted(n for n in declared if not hasattr(cls, n)):
            problems.append(f"the stub declares {cname}.{name}, which the runtime lacks")
        for name in sorted(aliases):
            problems.append(f"class {cname} in the stub assigns {name}; annotate it instead")
    return problems


@pytest.fixture(scope="module")
def tree():
    return ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))


# ---- tests ----

def test_stub_and_marker_ship_next_to_the_extension():
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_every_module_name_matches(tree):
    assert module_problems(tree, _C) == []


def test_every_class_member_matches(tree):
    assert class_problems(tree, _C) == []


def test_stub_covers_the_core_classes(tree):
    classes = stub_classes(tree)
    for name in ("Tensor", "Node", "Program", "Runtime", "Store", "Comm", "PipelineError"):
        assert name in classes, f"class {name} missing from the stub"
    declared, _ = declarations(classes["Tensor"].body, "class Tensor")
    # the operators users reach for, whatever the runtime happens to expose
    for op in ("__getitem__", "__setitem__", "__len__", "__add__", "__mul__", "__matmul__",
               "__truediv__", "__neg__", "__dlpack__", "__dlpack_device__"):
        assert op in declared


def test_cuda_only_list_is_accurate():
    runtime = set(dir(_C))
    assert all(n.startswith("_cuda_") for n in CUDA_ONLY)
    if _C._cuda_built:
        assert CUDA_ONLY <= runtime, sorted(CUDA_ONLY - runtime)
        # any other _cuda_* function is one of the two that every build has
        assert {n for n in runtime if n.startswith("_cuda_")} - CUDA_ONLY == {
            "_cuda_is_available", "_cuda_device_count", "_cuda_built",
            "_cuda_array_interface"}  # the last two: a constant and a dlpack.c function
    else:
        assert not (CUDA_ONLY & runtime), sorted(CUDA_ONLY & runtime)


class _FakeModule:
    """A stand-in for pipec._C with one extra public function and one name removed."""

    def __init__(self, drop):
        self._drop = drop
        for n in dir(_C):
            if n != drop and not n.startswith("__"):
                setattr(self, n, getattr(_C, n))
        self.brand_new_op = lambda x: x

    def __dir__(self):
        return [n for n in vars(self) if n != "_drop"]


def test_checks_can_fail(tree):
    # a public function added to the C module without a stub entry
    fake = _FakeModule(drop="relu")
    problems = module_problems(tree, fake)
    assert "pipec._C.brand_new_op has no declaration in the stub" in problems
    # a stub entry for something the module no longer has
    assert "the stub declares relu, which pipec._C does not have" in problems
    # a Tensor method missing from the stub
    trimmed = ast.parse(STUB.read_text(encoding="utf-8"))
    tensor = stub_classes(trimmed)["Tensor"]
    tensor.body = [n for n in tensor.body if getattr(n, "name", None) != "unsqueeze"]
    assert "Tensor.unsqueeze has no declaration in the stub" in class_problems(trimmed, _C)
