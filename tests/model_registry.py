"""The pipelining model zoo, written with pipec.

Mirrors PyTorch's test/distributed/pipelining/model_registry.py class for class: the same
attributes, parameter names, shapes, initialisation rules and forward logic, so that tests
written against the torch zoo port by changing imports. Used by the tests and by make demo.
"""
import pipec
from pipec.autograd import Function
from pipec.pipelining import SplitPoint, pipe_split


class ExampleCode(pipec.nn.Module):
    def __init__(self, d_hid, splits=2):
        assert splits <= 8
        super().__init__()
        self.splits = splits
        self.mm_param0 = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.mm_param1 = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.cval = pipec.nn.Buffer(pipec.randn((d_hid,), requires_grad=False))
        self.lin0 = pipec.nn.Linear(d_hid, d_hid)
        self.lin1 = pipec.nn.Linear(d_hid, d_hid)
        self.lin2 = pipec.nn.Linear(d_hid, d_hid)
        self.lin3 = pipec.nn.Linear(d_hid, d_hid)
        self.lin4 = pipec.nn.Linear(d_hid, d_hid)
        self.lin5 = pipec.nn.Linear(d_hid, d_hid)
        self.lin6 = pipec.nn.Linear(d_hid, d_hid)

    def forward(self, x):
        x = pipec.mm(x, self.mm_param0)
        x = pipec.relu(x)
        # a value that does not require grad, crossing a stage boundary
        a_constant = self.cval.clone()
        x = self.lin0(x)
        pipe_split()
        x = pipec.relu(x) + a_constant
        x = pipec.mm(x, self.mm_param1)
        if self.splits > 2:
            pipe_split()
            x = self.lin1(x)
            x = pipec.relu(x)
        if self.splits > 3:
            pipe_split()
            x = self.lin2(x)
            x = pipec.relu(x)
        if self.splits > 4:
            pipe_split()
            x = self.lin3(x)
            x = pipec.relu(x)
        if self.splits > 5:
            pipe_split()
            x = self.lin4(x)
            x = pipec.relu(x)
        if self.splits > 6:
            pipe_split()
            x = self.lin5(x)
            x = pipec.relu(x)
        if self.splits > 7:
            pipe_split()
            x = self.lin6(x)
            x = pipec.relu(x)
        return x


class ModelWithKwargs(pipec.nn.Module):
    DEFAULT_DHID = 512
    DEFAULT_BATCH_SIZE = 256

    def __init__(self, d_hid: int = DEFAULT_DHID, splits=2):
        assert splits <= 8
        super().__init__()
        self.splits = splits
        self.mm_param0 = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.mm_param1 = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.lin0 = pipec.nn.Linear(d_hid, d_hid)
        self.lin1 = pipec.nn.Linear(d_hid, d_hid)
        self.lin2 = pipec.nn.Linear(d_hid, d_hid)
        self.lin3 = pipec.nn.Linear(d_hid, d_hid)
        self.lin4 = pipec.nn.Linear(d_hid, d_hid)
        self.lin5 = pipec.nn.Linear(d_hid, d_hid)
        self.lin6 = pipec.nn.Linear(d_hid, d_hid)
        self.lin7 = pipec.nn.Linear(d_hid, d_hid)

    def forward(self, x, y=pipec.zeros(DEFAULT_BATCH_SIZE, DEFAULT_DHID)):
        x = pipec.mm(x, self.mm_param0)
        x = x + y
        x = self.lin0(x)
        x = pipec.relu(x)
        pipe_split()
        x = pipec.mm(x, self.mm_param1)
        x = self.lin1(x)
        x = pipec.relu(x)
        if self.splits > 2:
            pipe_split()
            x = self.lin2(x)
            x = pipec.relu(x)
        if self.splits > 3:
            pipe_split()
            x = self.lin3(x)
            x = pipec.relu(x)
        if self.splits > 4:
            pipe_split()
            x = self.lin4(x)
            x = pipec.relu(x)
        if self.splits > 5:
            pipe_split()
            x = self.lin5(x)
            x = pipec.relu(x)
        if self.splits > 6:
            pipe_split()
            x = self.lin6(x)
            x = pipec.relu(x)
        if self.splits > 7:
            pipe_split()
            x = self.lin7(x)
            x = pipec.relu(x)
        return x


class ModelWithParamAlias(pipec.nn.Module):
    default_dhid = 512
    default_batch_size = 256

    def __init__(self, d_hid: int = default_dhid):
        super().__init__()
        self.mm_param1 = self.mm_param0 = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.lin1 = self.lin0 = pipec.nn.Linear(d_hid, d_hid)

    def forward(self, x, y):
        x = pipec.mm(x, self.mm_param0)
        x = x + y
        x = self.lin0(x)
        x = pipec.relu(x)
        pipe_split()
        x = pipec.mm(x, self.mm_param1)
        x = self.lin1(x)
        x = pipec.relu(x)
        return x


# MLP layer
class MLPModule(pipec.nn.Module):
    def __init__(self, d_hid: int):
        super().__init__()
        self.net1 = pipec.nn.Linear(d_hid, d_hid)
        self.relu = pipec.nn.ReLU()
        self.net2 = pipec.nn.Linear(d_hid, d_hid)

    def forward(self, x):
        x = self.net1(x)
        x = self.relu(x)
        x = self.net2(x)
        return x


class MLPKWargModule(pipec.nn.Module):
    def __init__(self, d_hid: int, layer_num):
        super().__init__()
        self.net1 = pipec.nn.Linear(d_hid, d_hid)
        self.relu = pipec.nn.ReLU()
        self.net2 = pipec.nn.Linear(d_hid, d_hid)
        self.layer_num = layer_num

    def forward(self, x, unused_kwarg: pipec.Tensor = pipec.zeros(1)):
        x = self.net1(x)
        x = self.relu(x)
        x = self.net2(x)
        # As in the torch zoo, returning (x, unused_kwarg) from layer 0 only is left for later.
        return x


# Multi-MLP model
class MultiMLP(pipec.nn.Module):
    def __init__(self, d_hid: int, n_layers: int = 2):
        super().__init__()
        self.layers = pipec.nn.ModuleList([MLPModule(d_hid) for _ in range(n_layers)])
        # For testing purposes only; a user would define this
        self.split_spec = {
            f"layers.{i}": SplitPoint.BEGINNING for i in range(1, n_layers)
        }

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# Multi-MLP with kwargs model
class MultiMLPKwargs(pipec.nn.Module):
    def __init__(self, d_hid: int, n_layers: int = 2):
        super().__init__()
        self.layers = pipec.nn.ModuleList(
            [MLPKWargModule(d_hid, i) for i in range(n_layers)]
        )
        # For testing purposes only; a user would define this
        self.split_spec = {
            f"layers.{i}": SplitPoint.BEGINNING for i in range(1, n_layers)
        }

    def forward(self, x, unused_kwarg: pipec.Tensor = pipec.zeros(1)):
        for layer in self.layers:
            x = layer(x)
        return x


class CustomLinearDx(Function):
    """x @ W^T + b whose backward returns only dX and stashes (grad_output, input) in
    module.cached_context[layer_idx] / [layer_idx + "_input"] for a later compute_dW()."""

    @staticmethod
    def forward(ctx, input_val, weight, bias, module, layer_idx):
        ctx.save_for_backward(input_val, weight, bias)
        ctx.module = module
        ctx.layer_idx = layer_idx
        return input_val.mm(weight.t()) + bias

    @staticmethod
    def backward(ctx, grad_output):
        input_val, weight, _ = ctx.saved_tensors
        grad_input = grad_output.mm(weight)
        ctx.module.cached_context[ctx.layer_idx].append(grad_output.clone())
        ctx.module.cached_context[str(ctx.layer_idx) + "_input"].append(
            input_val.clone()
        )
        return grad_input, None, None, None, None


class CustomLinearDxDw(Function):
    """x @ W^T + b with the full backward (dX, dW, db) written out by hand."""

    @staticmethod
    def forward(ctx, input_val, weight, bias):
        ctx.save_for_backward(input_val, weight, bias)
        return input_val.mm(weight.t()) + bias

    @staticmethod
    def backward(ctx, grad_output):
        input_val, weight, _ = ctx.saved_tensors
        grad_input = grad_output.mm(weight)
        grad_weight = grad_output.t().mm(input_val)
        grad_bias = grad_output.sum(0)
        return grad_input, grad_weight, grad_bias


class MLPModuleWithDw(pipec.nn.Module):
    def __init__(self, d_hid: int):
        super().__init__()
        self.fc1_weight = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.fc1_bias = pipec.nn.Parameter(pipec.randn(d_hid))
        self.fc2_weight = pipec.nn.Parameter(pipec.randn(d_hid, d_hid))
        self.fc2_bias = pipec.nn.Parameter(pipec.randn(d_hid))

        pipec.nn.init.uniform_(self.fc1_weight, -0.001, 0.001)
        pipec.nn.init.uniform_(self.fc2_weight, -0.001, 0.001)
        pipec.nn.init.uniform_(self.fc1_bias, -0.001, 0.001)
        pipec.nn.init.uniform_(self.fc2_bias, -0.001, 0.001)

        self.cached_context = {}
        self.cached_context["fc1"] = []
        self.cached_context["fc2"] = []
        self.cached_context["fc1_input"] = []
        self.cached_context["fc2_input"] = []

        self.use_custom_logic = False

    def forward(self, x):
        if not self.use_custom_logic:
            self.hidden = CustomLinearDxDw.apply(x, self.fc1_weight, self.fc1_bias)
            self.hidden = pipec.nn.functional.relu(self.hidden)
            output = CustomLinearDxDw.apply(self.hidden, self.fc2_weight, self.fc2_bias)
            return output

        self.hidden = CustomLinearDx.apply(
            x, self.fc1_weight, self.fc1_bias, self, "fc1"
        )
        self.hidden = pipec.nn.functional.relu(self.hidden)
        output = CustomLinearDx.apply(
            self.hidden, self.fc2_weight, self.fc2_bias, self, "fc2"
        )
        return output

    def compute_dW(self):
        grad_output_fc1 = self.cached_context["fc1"].pop(0)
        grad_output_fc2 = self.cached_context["fc2"].pop(0)
        cached_input_fc1 = self.cached_context["fc1_input"].pop(0)
        cached_input_fc2 = self.cached_context["fc2_input"].pop(0)

        dW2 = grad_output_fc2.t().mm(cached_input_fc2)
        db2 = grad_output_fc2.sum(0)

        dW1 = grad_output_fc1.t().mm(cached_input_fc1)
        db1 = grad_output_fc1.sum(0)

        if self.fc1_weight.grad is not None:
            self.fc1_weight.grad += dW1
            self.fc1_bias.grad += db1
            self.fc2_weight.grad += dW2
            self.fc2_bias.grad += db2
        else:
            self.fc1_weight.grad = dW1
            self.fc1_bias.grad = db1
            self.fc2_weight.grad = dW2
            self.fc2_bias.grad = db2

    def toggle(self):
        self.use_custom_logic = not self.use_custom_logic


# Multi-MLP model with dW
class MultiMLPWithDw(pipec.nn.Module):
    def __init__(self, d_hid: int, n_layers: int = 2):
        super().__init__()
        self.layers = pipec.nn.ModuleList(
            [MLPModuleWithDw(d_hid) for _ in range(n_layers)]
        )
        # For testing purposes only; a user would define this
        self.split_spec = {
            f"layers.{i}": SplitPoint.BEGINNING for i in range(1, n_layers)
        }
        self.use_custom_logic = False

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def toggle(self):
        self.use_custom_logic = not self.use_custom_logic
        for layer in self.layers:
            layer.toggle()

    def compute_dW(self):
        if not self.use_custom_logic:
            raise RuntimeError("Need to call toggle() to enable custom backward and dW")

        for i in reversed(range(len(self.layers))):
            self.layers[i].compute_dW()


# pipec addition: values that skip stages (stage 1's output also feeds stage 3, stage 0's
# feeds stage 3), for pipelines where such an edge crosses ranks while the stage in between
# sits on the producer's rank (V placement), which the lowering has no send action for
class SkipConnections(pipec.nn.Module):
    def __init__(self, d_hid: int):
        super().__init__()
        self.l0 = pipec.nn.Linear(d_hid, d_hid)
        self.l1 = pipec.nn.Linear(d_hid, d_hid)
        self.l2 = pipec.nn.Linear(d_hid, d_hid)
        self.l3 = pipec.nn.Linear(d_hid, d_hid)

    def forward(self, x):
        h0 = pipec.relu(self.l0(x))
        pipe_split()
        h1 = pipec.relu(self.l1(h0))
        pipe_split()
        h2 = pipec.relu(self.l2(h1))
        pipe_split()
        return self.l3(h2) + h1 + h0


class TiedWeights(pipec.nn.Module):
    """An input projection whose weight is reused (transposed use, as tied embeddings are)
    by the output layer: after pipeline() the first and the last stage each hold a copy of
    ``emb.weight``. One stage per layer (``n_layers`` stages)."""

    def __init__(self, d_hid: int, n_layers: int = 2):
        super().__init__()
        self.emb = pipec.nn.Linear(d_hid, d_hid, bias=False)
        self.layers = pipec.nn.ModuleList([pipec.nn.Linear(d_hid, d_hid)
                                           for _ in range(n_layers)])

    def forward(self, x):
        h = pipec.relu(self.emb(x))
        for i, layer in enumerate(self.layers):
            if i > 0:
                pipe_split()
            h = pipec.relu(layer(h))
        return pipec.nn.functional.linear(h, self.emb.weight.t())


class TiedChain(pipec.nn.Module):
    """Four stages sharing weights unevenly: ``a.weight`` is used by stages 0 and 3, ``b``
    (weight and bias) by stages 1, 2 and 3. On one rank per stage the tied copies span two
    and three ranks, and every rank holds a different set of them."""

    def __init__(self, d_hid: int):
        super().__init__()
        self.a = pipec.nn.Linear(d_hid, d_hid)
        self.b = pipec.nn.Linear(d_hid, d_hid)
        self.c = pipec.nn.Linear(d_hid, d_hid)

    def forward(self, x):
        h = pipec.relu(self.a(x))
        pipe_split()
        h = pipec.relu(self.b(h))
        pipe_split()
        h = pipec.relu(self.b(h)) + pipec.relu(self.c(h))
        pipe_split()
        return pipec.nn.functional.linear(h, self.a.weight.t()) + self.b(h)
