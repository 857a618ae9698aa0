"""Code.Run generator (``build_code_run`` and helpers in data/construct_synthetic_dataset.py).

A module of ``def func_<id>(x)`` functions in layers: each function returns a random function of the
next layer plus or minus a constant, the last layer returns ``x`` plus or minus a constant. The
question calls a first-layer function; its value is computed here by walking the call chain (the
upstream script imports the generated module and calls it).
"""

from __future__ import annotations

from dataclasses import dataclass

from eval.benchmarks.infinitebench.synthetic.retrieval import rng_for
from eval.benchmarks.infinitebench.tasks import Example

# Call depths: 80 samples each in this order upstream (n_list).
DEPTHS: tuple[int, ...] = (2, 4, 6, 8, 10)
MIN_ADD, MAX_ADD = -12, 17
MIN_X, MAX_X = -10, 10
# generate_code_run_example's header and question (verbatim).
HEADER = "\nHere is the content of functions_module.py:\n\n"
QUESTION = (
    "Please give me the exact number of the return value of func_{j}({x}). "
    "Your response should end with the sentence 'The return value is:'."
)


@dataclass(frozen=True)
class Function:
    """``def func_<id>(x): return func_<callee>(x) + add`` (``callee`` None: ``return x + add``)."""

    id: int
    callee: int | None
    add: int

    def source(self) -> str:
        """The function as generate_functions prints it (no "+ 0", negatives as "- k")."""
        call = f"func_{self.callee}(x)" if self.callee is not None else "x"
        if self.add == 0:
            body = call
        elif self.add < 0:
            body = f"{call} - {-self.add}"
        else:
            body = f"{call} + {self.add}"
        return f"def func_{self.id}(x):\n    return {body}\n"


def call_depth(index: int, total: int) -> int:
    """Number of layers for sample ``index``: the five depths in equal consecutive blocks."""
    return DEPTHS[min(len(DEPTHS) - 1, index * len(DEPTHS) // total)]


def evaluate(functions: dict[int, Function], start: int, x: int) -> int:
    """Value of ``func_<start>(x)``: follow the callees, adding each constant."""
    value, current, steps = x, functions[start], 0
    while True:
        value += current.add
        if current.callee is None:
            return value
        current = functions[current.callee]
        steps += 1
        if steps > len(functions):
            raise ValueError("cyclic function chain")


def code_run(index: int, total: int, units: int, seed: int) -> Example:
    """A module of about ``units`` functions in ``call_depth`` layers and one call to evaluate.

    As upstream, ids are distinct random ints in ``1..2*units`` and every layer holds
    ``units // layers`` functions.
    """
    rng = rng_for("code_run", seed, index)
    layers_count = call_depth(index, total)
    per_layer = units // layers_count
    if per_layer < 1:
        raise ValueError(f"code_run needs at least {layers_count} functions, got {units}")
    ids = rng.sample(range(1, 2 * units + 1), per_layer * layers_count)
    layers = [ids[i * per_layer : (i + 1) * per_layer] for i in range(layers_count)]
    functions: dict[int, Function] = {}
    for depth, layer in enumerate(layers):
        last = depth == layers_count - 1
        for fid in layer:
            callee = None if last else rng.choice(layers[depth + 1])
            functions[fid] = Function(fid, callee, rng.randint(MIN_ADD, MAX_ADD))
    # Sorted by id, each function followed by a blank line, as written to functions_module.py.
    module = "".join(functions[fid].source() + "\n" for fid in sorted(functions))
    start = rng.choice(layers[0])
    x = rng.randint(MIN_X, MAX_X)
    return Example(
        id=index,
        context=HEADER + module,
        input=QUESTION.format(j=start, x=x),
        answer=[evaluate(functions, start, x)],
        meta={"units": units, "layers": layers_count, "functions": len(functions)},
    )
