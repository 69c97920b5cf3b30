"""The static check: a fast first filter on a candidate kernel module, an allow-list over its AST.

It is not the wall (the sandboxed compile and the artifact-only judge are): it rejects in a few
milliseconds, with a line number and a one-line reason, what a kernel module has no reason to
contain, so that most tampering attempts never reach a compiler.

The rules:
- imports: only the modules of `_IMPORTABLE`, absolute, no `*`; `import a.b` without `as` binds `a`,
  which must itself be a module an attribute chain may reach (`import cuda.bindings.driver` binds
  the whole `cuda` package: write `import cuda.bindings.driver as cuda`); `from x import y` checks
  `y` like an attribute name;
- attributes: none named after a module outside `_REACHABLE` (`dataclasses.sys`, `cutlass.base_dsl`,
  `cute.arch.llvm`: the names of `_MODULE_ATTRIBUTES`, derived from the installed DSL and checked
  against it by tests/test_static_check.py), no frame / code / MLIR handles, no private name the
  module does not define itself, assignment and deletion only on `self`;
- names: no dunder identifier except `_DUNDERS`, and none of `_FORBIDDEN_NAMES` (the builtins and
  library functions that turn a string into an object or code: getattr and its aliases by any
  name, in any position: a Name, an attribute, an import or its alias, a def, an argument, a
  keyword);
- string and bytes constants (f-string parts included, docstrings exempt): none containing "__",
  none spelling a forbidden name;
- DSL internals a template needs (`_INTERNAL_IMPORTS`): exactly those names, each used only
  through the listed attributes;
- no `global` / `nonlocal`; the module assigns KERNEL at top level.
"""

from __future__ import annotations

import ast

__all__ = ["check"]

# What a kernel module may import: the DSL modules the shipped templates use (flash_fwd_sm90,
# naive_attention; the Blackwell helpers, tcgen05 and the sm100 pipelines for flash_fwd_sm100) and
# plain-Python modules that hold no process state.
_IMPORTABLE = frozenset({
    "cutlass", "cutlass.cute", "cutlass.cute.nvgpu", "cutlass.cute.nvgpu.cpasync", "cutlass.cute.nvgpu.warp",
    "cutlass.cute.nvgpu.warpgroup", "cutlass.cute.nvgpu.tcgen05", "cutlass.pipeline", "cutlass.memory",
    "cutlass.utils", "cutlass.utils.hopper_helpers", "cutlass.utils.blackwell_helpers", "cutlass.tensor_utils",
    "cuda.bindings.driver",
    "math", "typing", "dataclasses", "functools", "operator", "enum", "__future__", "collections", "itertools",
})

# Every module an attribute chain from an importable module may reach by attribute names outside
# _MODULE_ATTRIBUTES (nvidia-cutlass-dsl 4.8.1). The public DSL tree, less its compiler, runtime,
# export, testing and framework bridges; plus `cutlass._mlir.dialects.math`, which `cute.arch.math`
# names while kernels need `cute.math` (the attribute `math` cannot be forbidden): it holds op
# builders for the math dialect and, as modules, only `builtins` (forbidden by name).
_REACHABLE = _IMPORTABLE | frozenset({
    "copy", "cutlass._mlir.dialects.math", "cutlass.block",
    "cutlass.cute.algorithm", "cutlass.cute.arch", "cutlass.cute.arch.clc", "cutlass.cute.arch.constants",
    "cutlass.cute.arch.elect", "cutlass.cute.arch.features", "cutlass.cute.arch.mbar",
    "cutlass.cute.arch.numeric_conversion", "cutlass.cute.arch.nvvm_wrappers", "cutlass.cute.arch.smem",
    "cutlass.cute.arch.tmem", "cutlass.cute.atom", "cutlass.cute.core", "cutlass.cute.math",
    "cutlass.cute.nvgpu.common", "cutlass.cute.nvgpu.cpasync.copy", "cutlass.cute.nvgpu.cpasync.helpers",
    "cutlass.cute.nvgpu.helpers", "cutlass.cute.nvgpu.tcgen05.copy", "cutlass.cute.nvgpu.tcgen05.helpers",
    "cutlass.cute.nvgpu.tcgen05.mma", "cutlass.cute.nvgpu.warp.copy", "cutlass.cute.nvgpu.warp.mma",
    "cutlass.cute.nvgpu.warpgroup.helpers", "cutlass.cute.nvgpu.warpgroup.mma", "cutlass.cute.tensor",
    "cutlass.cute.tuple", "cutlass.memory.smem", "cutlass.memory.tmem", "cutlass.pipeline.empty",
    "cutlass.pipeline.helpers", "cutlass.pipeline.profiling", "cutlass.pipeline.sm100", "cutlass.pipeline.sm90",
    "cutlass.tensor_utils.layout", "cutlass.tensor_utils.tensormap", "cutlass.utils.block",
    "cutlass.utils.blockscaled_layout", "cutlass.utils.dynamic_persistent_tile_scheduler", "cutlass.utils.gemm",
    "cutlass.utils.gemm.sm100", "cutlass.utils.gemm.tensor_utils",
    "cutlass.utils.grouped_gemm_persistent_tile_scheduler",
    "cutlass.utils.layout", "cutlass.utils.mixed_cluster_params", "cutlass.utils.mixed_input_helpers",
    "cutlass.utils.profiling", "cutlass.utils.rubin_helpers", "cutlass.utils.smem_allocator",
    "cutlass.utils.static_persistent_tile_scheduler", "cutlass.utils.tensor_helpers",
    "cutlass.utils.tensormap_manager", "cutlass.utils.tmem_allocator",
    "cutlass._mlir.dialects.nvvm",  # through _INTERNAL_IMPORTS
})

# Attribute names under which a reachable module holds (or a reachable package has as a submodule)
# a module outside _REACHABLE: the DSL's compiler, runtime and MLIR internals, and the standard
# modules that reach the process. Derived from nvidia-cutlass-dsl 4.8.1; tests re-derive it.
_MODULE_ATTRIBUTES = frozenset({
    # the DSL's internals and the MLIR bindings (os, sys, subprocess and the IR are behind them)
    "T", "_base_dsl_typing", "_base_math", "_common", "_cute_ir", "_cute_nvgpu_ir", "_cutlass_ir", "_dsl",
    "_mlir", "_mlir_helpers", "_nvvm", "_nvvm_raw", "_tvm_ffi_args_spec_converter", "_vector_dialect",
    "arith", "base_dsl", "builtin", "compiler", "cuda", "cutlass_arith", "cutlass_dsl", "cutlass_torch",
    "distributed", "experimental", "export", "ffi", "gpu", "hardware_info", "impl_utils", "ir", "jax",
    "launch_facts", "llvm", "metadata", "mlir_arith", "mlir_llvm", "mlir_vector", "nvvm", "print_latex",
    "runtime", "scf", "testing", "typing", "typing_module", "vector", "vector_d", "viz",
    # standard modules re-exported by reachable modules, and the ones a kernel must never hold
    "_collections_abc", "_ctypes", "_sys", "_thread", "_warnings", "abc", "atexit", "bltns", "builtins", "code",
    "contextlib", "ctypes", "gc", "importlib", "inspect", "io", "json", "keyword", "marshal", "mmap",
    "multiprocessing", "os", "pathlib", "pickle", "posix", "re", "resource", "runpy", "shutil", "signal", "site",
    "socket", "stdlib_re", "subprocess", "sys", "sysconfig", "tempfile", "threading", "types", "warnings",
    "torch", "avo",
})

# Handles from a Python object to the interpreter's frames and code, and from a DSL value to the
# MLIR it builds: with an Operation or Context in hand, `parse` builds arbitrary IR, host calls
# (llvm.call @system) included, which would run in the judge when the artifact is loaded.
_HANDLE_ATTRIBUTES = frozenset({
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "frame", "gi_code", "gi_frame", "gi_yieldfrom",
    "cr_code", "cr_frame", "ag_code", "ag_frame", "tb_frame", "tb_next", "co_code", "co_consts", "co_names",
    "func_globals", "cell_contents",
    "owner", "operation", "parse", "context", "Operation", "InsertionPoint", "Module", "Context",
})

# Names that turn a string into an object or code, read or write the namespace, touch files or the
# terminal, or build classes and functions from parts. hasattr and type are here too: hasattr only
# probes by a string, type(x) reaches the class of any internal object (ModuleType, FunctionType)
# without naming it, and no kernel needs either. super and print stay allowed (harmless).
_FORBIDDEN_NAMES = frozenset({
    "getattr", "setattr", "delattr", "hasattr", "globals", "locals", "vars", "dir", "open", "eval", "exec",
    "compile", "breakpoint", "input", "memoryview", "type", "help", "exit", "quit",
    "attrgetter", "methodcaller", "ForwardRef", "get_type_hints", "FunctionType", "CodeType", "MethodType",
    "ModuleType", "LambdaType", "BuiltinFunctionType", "MappingProxyType",
})

# DSL internals a template needs, importable only as `from MODULE import NAME` with exactly these
# names, each usable only as NAME.<one of the listed attributes> (None: the usual attribute rules).
# flash_fwd_sm100 emits PTX inline asm (exp2 on the FMA pipes) and tcgen05 fences the public DSL
# does not wrap. The llvm dialect is kept to inline_asm because llvm.call / llvm.func would put a
# call to any host function (system, dlopen) into the compiled artifact the judge loads.
_INTERNAL_IMPORTS: dict[str, dict[str, frozenset[str] | None]] = {
    "cutlass._mlir.dialects": {"llvm": frozenset({"inline_asm", "AsmDialect"}), "nvvm": None},
    "cutlass.cutlass_dsl": {
        "T": frozenset({"bool", "i8", "i16", "i32", "i64", "f16", "bf16", "f32", "f64"}),  # MLIR scalar types
        "dsl_user_op": None,
    },
}

_DUNDERS = frozenset({"__init__", "__call__", "__post_init__"})  # method names a kernel class defines
_SELF = frozenset({"self", "cls"})


class _Reject(Exception):
    def __init__(self, node: ast.AST, reason: str):
        super().__init__(reason)
        # the leftmost, innermost node of a line is reported: `collections.abc.sys` names `abc`
        self.where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0), getattr(node, "end_col_offset", 0))
        self.reason = reason


def check(text: str) -> tuple[bool, str]:
    """(True, "") if the module passes, else (False, "line N: reason")."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return False, f"line {exc.lineno}: syntax error: {exc.msg}"
    defined = _defined_private_names(tree)
    docstrings = _docstrings(tree)
    restricted = _restricted_names(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    rejections = []
    for node in ast.walk(tree):
        if node in docstrings:
            continue
        try:
            _check_node(node, defined)
            if isinstance(node, ast.Name) and restricted.get(node.id) is not None:
                _check_restricted_use(node, parents.get(node), restricted[node.id])
        except _Reject as exc:
            rejections.append((exc.where, exc.reason))
    if rejections:
        where, reason = min(rejections)
        return False, f"line {where[0]}: {reason}"
    if not any(_assigns_kernel(node) for node in tree.body):
        return False, "line 1: the module does not assign KERNEL (the kernel class) at top level"
    return True, ""


def _assigns_kernel(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "KERNEL" for t in node.targets)
    return isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "KERNEL"


def _restricted_names(tree: ast.Module) -> dict[str, frozenset[str] | None]:
    """Local names bound to the DSL internals of _INTERNAL_IMPORTS, with the attributes they allow."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in _INTERNAL_IMPORTS and not node.level:
            for alias in node.names:
                allowed = _INTERNAL_IMPORTS[node.module].get(alias.name)
                names[alias.asname or alias.name] = allowed
    return names


def _check_restricted_use(node: ast.Name, parent: ast.AST | None, allowed: frozenset[str]) -> None:
    if isinstance(node.ctx, ast.Load) and isinstance(parent, ast.Attribute) and parent.value is node \
            and parent.attr in allowed:
        return
    raise _Reject(node, f"{node.id!r} (a DSL internal) may only be used as {node.id}.<{'|'.join(sorted(allowed))}>")


def _docstrings(tree: ast.Module) -> set[ast.Constant]:
    """Docstrings are exempt from the string rules: only a dunder (`__doc__`) reads them back."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(value)
    return found


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private names the module defines itself (methods, classes, attributes it assigns): only
    these may be read as `x._name`. The DSL's own private names stay forbidden (_MODULE_ATTRIBUTES)
    even when a module defines a method of the same name."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_")}


def _check_identifier(node: ast.AST, name: str, what: str) -> None:
    if name.startswith("__") and name not in _DUNDERS:
        raise _Reject(node, f"{what} {name!r}: dunder names are not allowed in a kernel module")
    if name in _FORBIDDEN_NAMES:
        raise _Reject(node, f"{what} {name!r} is not allowed in a kernel module (by any name, in any position)")


def _check_attribute_name(node: ast.AST, name: str, what: str, defined: set[str]) -> None:
    _check_identifier(node, name, what)
    if name in _MODULE_ATTRIBUTES:
        raise _Reject(node, f"{what} {name!r} names a module a kernel module may not reach")
    if name in _HANDLE_ATTRIBUTES:
        raise _Reject(node, f"{what} {name!r} is an interpreter or MLIR handle, not allowed in a kernel module")
    if name.startswith("_") and name not in _DUNDERS and name not in defined:
        raise _Reject(node, f"{what} {name!r} is private to another module")


def _check_node(node: ast.AST, defined: set[str]) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in _IMPORTABLE:
                raise _Reject(node, f"import of {alias.name!r} is not allowed in a kernel module")
            top = alias.name.split(".")[0]
            if alias.asname is None and top not in _REACHABLE:
                raise _Reject(node, f"'import {alias.name}' binds the package {top!r}, which a kernel module may "
                                    f"not hold: write 'import {alias.name} as NAME'")
            if alias.asname is not None:
                _check_identifier(node, alias.asname, "import alias")
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            raise _Reject(node, "relative imports are not allowed in a kernel module")
        if node.module in _INTERNAL_IMPORTS:
            for alias in node.names:
                if alias.name not in _INTERNAL_IMPORTS[node.module]:
                    known = ", ".join(sorted(_INTERNAL_IMPORTS[node.module]))
                    raise _Reject(node, f"'from {node.module} import {alias.name}': only {known} may be imported "
                                        "from this DSL internal")
                if alias.asname is not None:
                    _check_identifier(node, alias.asname, "import alias")
            return
        if node.module not in _IMPORTABLE:
            raise _Reject(node, f"import from {node.module!r} is not allowed in a kernel module")
        for alias in node.names:
            if alias.name == "*":
                raise _Reject(node, f"'from {node.module} import *' is not allowed in a kernel module")
            if f"{node.module}.{alias.name}" not in _REACHABLE and node.module != "__future__":
                _check_attribute_name(node, alias.name, f"'from {node.module} import'", set())
            if alias.asname is not None:
                _check_identifier(node, alias.asname, "import alias")
    elif isinstance(node, ast.Attribute):
        _check_attribute_name(node, node.attr, "attribute", defined)
        if not isinstance(node.ctx, ast.Load) and not (isinstance(node.value, ast.Name) and node.value.id in _SELF):
            raise _Reject(node, f"assigning or deleting {ast.unparse(node)!r}: only attributes of self may be "
                                "set in a kernel module")
    elif isinstance(node, ast.Name):
        _check_identifier(node, node.id, "name")
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        _check_identifier(node, node.name, "definition of")
    elif isinstance(node, ast.arg):
        _check_identifier(node, node.arg, "argument")
    elif isinstance(node, ast.keyword) and node.arg is not None:
        _check_identifier(node, node.arg, "keyword")
    elif isinstance(node, ast.Global | ast.Nonlocal):
        kind = "global" if isinstance(node, ast.Global) else "nonlocal"
        raise _Reject(node, f"'{kind}' is not allowed in a kernel module (module state is off limits)")
    elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        value = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
        if "__" in value:
            raise _Reject(node, f"string {_short(value)} contains '__' (a dunder can be built from it)")
        if len(value.strip()) > 1 and value.strip() in _FORBIDDEN_NAMES | _MODULE_ATTRIBUTES | _HANDLE_ATTRIBUTES:
            raise _Reject(node, f"string {_short(value)} spells a name a kernel module may not use")
    elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name is not None:
        _check_identifier(node, node.name, "name")
    elif isinstance(node, ast.ExceptHandler) and node.name is not None:
        _check_identifier(node, node.name, "name")


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")
