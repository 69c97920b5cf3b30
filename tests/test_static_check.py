"""The static check (avo.static_check): every shipped template passes, every evasion class of issue 10
fails with its line and reason, and the attribute names it forbids still cover the installed DSL."""

import importlib
import pkgutil
import types

import pytest

from avo import jit
from avo import static_check as sc
from avo.spec import AttentionSpec
from avo.static_check import check

TEMPLATES = ["naive_attention", "flash_fwd_sm90"] + (
    ["flash_fwd_sm100"] if (jit.TEMPLATES_DIR / "flash_fwd_sm100" / "template.py.j2").exists() else [])


def _renders():
    """Each template at its default knobs for every head_dim and causal flag, and with each knob
    moved alone to every value of its SPACE."""
    out = []
    for template in TEMPLATES:
        space = jit.knob_space(template)
        seen = set()
        for head_dim in (64, 128, 256):
            for causal in (False, True):
                seen.add(jit.load_knobs(template, spec=AttentionSpec(head_dim=head_dim, causal=causal)))
        base = jit.load_knobs(template)
        for name, values in space.SPACE.items():
            seen.update(base.replace(**{name: v}) if hasattr(base, "replace") else base for v in values)
        out += [(template, knobs) for knobs in sorted(seen, key=repr)]
    return out


def test_every_template_render_passes():
    renders = _renders()
    assert len(renders) > 20
    for template, knobs in renders:
        assert check(jit.render(template, knobs).read_text()) == (True, ""), (template, knobs)


PREFIX = "import math\nimport cutlass\nimport cutlass.cute as cute\n"

# (case, source lines: the offence is the line marked "# here", else the last, words the reason must contain)
EVASIONS = [
    # names that turn a string into an object, by any name and in any position
    ("getattr", ["x = getattr(math, 'pi')"], "'getattr' is not allowed"),
    ("getattr_alias", ["g = getattr"], "'getattr' is not allowed"),
    ("getattr_as_keyword", ["f = dict(getattr=1)"], "'getattr' is not allowed"),
    ("getattr_as_def", ["def getattr(x):  # here", "    return x"], "'getattr' is not allowed"),
    ("import_alias_to_getattr", ["import cutlass.cute as getattr"], "'getattr' is not allowed"),
    ("builtins_subscript", ["o = __builtins__['open']"], "dunder"),
    ("from_builtins", ["from builtins import open as o"], "import from 'builtins'"),
    ("vars", ["v = vars(math)"], "'vars'"), ("globals", ["g = globals()['math']"], "'globals'"),
    ("locals", ["v = locals()"], "'locals'"), ("dir", ["d = dir(math)"], "'dir'"),
    ("eval", ["e = eval('1')"], "'eval'"), ("exec", ["exec('x = 1')"], "'exec'"),
    ("compile", ["c = compile('1', 'f', 'eval')"], "'compile'"), ("open", ["f = open('/tmp/x', 'w')"], "'open'"),
    ("breakpoint", ["breakpoint()"], "'breakpoint'"), ("input", ["s = input()"], "'input'"),
    ("hasattr", ["h = hasattr(math, 'pi')"], "'hasattr'"), ("memoryview", ["m = memoryview(b'x')"], "'memoryview'"),
    ("type3", ["C = type('C', (), {})"], "'type'"), ("exit", ["exit()"], "'exit'"),
    ("dsl_compile", ["f = cute.compile"], "'compile'"),
    ("attrgetter", ["import operator", "g = operator.attrgetter('pi')"], "'attrgetter'"),
    ("from_operator_methodcaller", ["from operator import methodcaller"], "'methodcaller'"),
    ("get_type_hints_evals", ["import typing", "h = typing.get_type_hints(int)"], "'get_type_hints'"),
    ("forward_ref", ["from typing import ForwardRef"], "'ForwardRef'"),
    # strings that build dunders or name forbidden things
    ("string_concat_dunder", ["n = '__' + 'import__'"], "contains '__'"),
    ("percent_format_dunder", ["n = '%simport%s' % ('__', '__')"], "contains '__'"),
    ("fstring_dunder", ["p = '_'", "n = f'{p}_import__'"], "contains '__'"),
    ("bytes_dunder", ["n = b'__import__'.decode()"], "contains '__'"),
    ("string_names_getattr", ["n = 'getattr'"], "spells a name"),
    ("string_names_module", ["n = 'sys'"], "spells a name"),
    # dunder names anywhere
    ("dunder_attribute", ["g = math.floor.__globals__"], "dunder"),
    ("dunder_class_walk", ["b = ().__class__.__bases__"], "dunder"),
    ("module_getattr_hook", ["def __getattr__(name):  # here", "    return name"], "dunder"),
    ("dunder_argument", ["def f(__x):  # here", "    return __x"], "dunder"),
    ("dunder_keyword", ["f = dict(__x=1)"], "dunder"),
    # modules reached through modules that re-export them
    ("dataclasses_sys", ["import dataclasses", "m = dataclasses.sys.modules"], "'sys' names a module"),
    ("typing_sys", ["import typing", "m = typing.sys"], "'sys' names a module"),
    ("functools_sys_modules", ["import functools", "m = functools.sys.modules"], "'sys' names a module"),
    ("collections_abc_sys", ["import collections", "m = collections.abc.sys"], "'abc' names a module"),
    ("from_dataclasses_import_sys", ["from dataclasses import sys"], "'sys' names a module"),
    ("from_typing_import_os", ["from typing import os as o"], "'os' names a module"),
    ("utils_importlib", ["m = cutlass.utils.importlib"], "'importlib' names a module"),
    ("driver_ctypes", ["import cuda.bindings.driver as cuda", "c = cuda.ctypes"], "'ctypes' names a module"),
    ("arch_types", ["t = cute.arch.types"], "'types' names a module"),
    ("torch_attribute", ["t = cutlass.torch"], "'torch' names a module"),
    # the DSL's internals
    ("import_base_dsl", ["import cutlass.base_dsl.jit_executor"], "import of 'cutlass.base_dsl.jit_executor'"),
    ("import_mlir", ["import cutlass._mlir.ir as ir"], "import of 'cutlass._mlir.ir'"),
    ("from_cutlass_base_dsl", ["from cutlass import base_dsl"], "'base_dsl' names a module"),
    ("from_cutlass_private", ["from cutlass import _mlir"], "'_mlir' names a module"),
    ("from_cute_runtime", ["from cutlass.cute import runtime"], "'runtime' names a module"),
    ("cute_runtime_attr", ["load = cute.runtime.load_module"], "'runtime' names a module"),
    ("attr_base_dsl", ["b = cutlass.base_dsl"], "'base_dsl' names a module"),
    ("attr_arch_llvm", ["c = cute.arch.llvm.call"], "'llvm' names a module"),
    # through the opaque cvt the seed now calls (cute.arch.cvt_f32x2_bf16x2 wraps inline asm)
    ("import_nvvm_wrappers", ["import cutlass.cute.arch.nvvm_wrappers as w  # here", "f = w.llvm.inline_asm"],
     "import of 'cutlass.cute.arch.nvvm_wrappers'"),
    ("cvt_globals", ["g = cute.arch.cvt_f32x2_bf16x2.__globals__"], "dunder"),
    ("internal_llvm_passed_along", ["from cutlass._mlir.dialects import llvm", "y = [llvm]"],
     "may only be used as llvm."),
    ("attr_private", ["p = cute.arch._internal"], "private to another module"),
    ("private_named_like_internal", ["class K:", "    def _mlir(self):", "        return cutlass._mlir"],
     "'_mlir' names a module"),
    ("llvm_call", ["from cutlass._mlir.dialects import llvm", "f = llvm.call"], "may only be used as llvm.<"),
    ("llvm_alias", ["from cutlass._mlir.dialects import llvm", "f = llvm"], "may only be used as llvm.<"),
    ("llvm_as_argument", ["from cutlass._mlir.dialects import llvm as L", "f = print(L)"], "may only be used as L.<"),
    ("dsl_internal_other_name", ["from cutlass.cutlass_dsl import CuTeDSL"], "only T, dsl_user_op"),
    ("mlir_owner", ["def f(x):", "    return x.ir_value().owner"], "MLIR handle"),
    ("mlir_parse", ["def f(op):", "    return op.parse('llvm.func @system()')"], "MLIR handle"),
    ("frame", ["def g():", "    yield 1", "f = g().gi_frame.f_globals"], "interpreter or MLIR handle"),
    # imports
    ("import_os", ["import os"], "import of 'os'"),
    ("import_torch", ["import torch"], "import of 'torch'"),
    ("import_avo", ["from avo import verify"], "import from 'avo'"),
    ("import_binds_cuda_package", ["import cuda.bindings.driver"], "binds the package 'cuda'"),
    ("relative_import", ["from . import zoo"], "relative imports"),
    ("star_import", ["from math import *"], "import *"),
    # state and monkeypatching
    ("global", ["def f():", "    global x"], "'global'"),
    ("nonlocal", ["def f():", "    x = 1", "    def g():", "        nonlocal x"], "'nonlocal'"),
    ("monkeypatch_dsl", ["cute.arch.sync_threads = print"], "only attributes of self"),
    ("delete_dsl", ["del cute.arch.sync_threads"], "only attributes of self"),
]


@pytest.mark.parametrize("case, lines, words", EVASIONS, ids=[c[0] for c in EVASIONS])
def test_evasion_is_rejected_with_its_line(case, lines, words):
    source = PREFIX + "\n".join(lines) + "\nKERNEL = None\n"
    ok, why = check(source)
    marked = [i for i, text in enumerate(lines, 1) if text.endswith("# here")]
    line = PREFIX.count("\n") + (marked[0] if marked else len(lines))
    assert not ok
    assert why.startswith(f"line {line}: "), why
    assert words in why, why
    assert "\n" not in why


ACCEPTED = [
    ("own_private_methods", ["class K:", "    def _load(self):", "        return 1",
                             "    def __call__(self):", "        return self._load()"]),
    ("super_init_print_lambda", ["class K(dict):", "    def __init__(self):", "        super().__init__()",
                                 "        print('ok')", "        self.f = lambda x, y=2: x * y"]),
    ("docstring_may_mention_dunders", ["def f():", "    '''Called from __call__.'''", "    return 1"]),
    ("future_and_dsl_names", ["from __future__ import annotations", "from cutlass import Float32 as F",
                              "from cutlass.cute.nvgpu import cpasync, warpgroup", "x = cute.math.exp2",
                              "y = cute.arch.sync_threads"]),
    ("inline_asm_through_llvm", ["from cutlass._mlir.dialects import llvm, nvvm",
                                 "from cutlass.cutlass_dsl import T, dsl_user_op",
                                 "f = (llvm.inline_asm, llvm.AsmDialect, T.f32, nvvm.tcgen05_fence, dsl_user_op)"]),
]


@pytest.mark.parametrize("case, lines", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_ordinary_kernel_python_passes(case, lines):
    assert check(PREFIX + "\n".join(lines) + "\nKERNEL = None\n") == (True, "")


def test_the_module_must_assign_kernel_and_parse():
    ok, why = check(PREFIX + "x = 1\n")
    assert not ok and "KERNEL" in why
    ok, why = check(PREFIX + "def f(:\n")
    assert not ok and why.startswith("line 4: syntax error")


def test_the_first_offence_by_position_is_reported():
    ok, why = check(PREFIX + "x = 1\ny = getattr(math, 'sys')\nimport os\nKERNEL = None\n")
    assert not ok
    assert why == "line 5: name 'getattr' is not allowed in a kernel module (by any name, in any position)"


def _import_all(names):
    modules = {}
    for name in sorted(names):
        modules[name] = importlib.import_module(name)
    return modules


def test_forbidden_attribute_names_cover_every_way_out_of_the_reachable_modules(monkeypatch):
    """From every module an attribute chain may reach, each module-valued attribute and each
    submodule either stays among _REACHABLE or has its name in _MODULE_ATTRIBUTES: a new DSL
    version that re-exports `os` under a new name fails here, not in production."""
    monkeypatch.setenv("CUTE_DSL_ARCH", "sm_90a")
    modules = _import_all(sc._REACHABLE)
    leaks = []
    for name, module in modules.items():
        for attr, value in list(vars(module).items()):
            if attr.startswith("__") or not isinstance(value, types.ModuleType):
                continue
            if value.__name__ not in sc._REACHABLE and attr not in sc._MODULE_ATTRIBUTES:
                leaks.append(f"{name}.{attr} -> {value.__name__}")
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if f"{name}.{info.name}" not in sc._REACHABLE and info.name not in sc._MODULE_ATTRIBUTES:
                leaks.append(f"{name}.{info.name} (submodule)")
    assert not leaks, leaks


def test_restricted_internals_name_real_dsl_objects():
    for module, names in sc._INTERNAL_IMPORTS.items():
        for name, attributes in names.items():
            obj = getattr(importlib.import_module(module), name)
            for attribute in attributes or ():
                assert hasattr(obj, attribute), (module, name, attribute)


def test_the_allowed_names_are_not_forbidden_elsewhere():
    reachable_leaves = {name.rsplit(".", 1)[-1] for name in sc._REACHABLE}
    assert not reachable_leaves & sc._FORBIDDEN_NAMES
    assert not {"math", "cute", "arch", "nvgpu", "layout", "copy"} & sc._MODULE_ATTRIBUTES
