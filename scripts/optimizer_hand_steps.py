# Expected values of the test `elementwise_rules_match_hand_computed_steps` (src/optim/tests.rs):
# three steps of each update rule, from the published formulas (PyTorch's documentation of
# torch.optim.SGD, Adagrad, RMSprop, Adadelta, Adam; AlgoPerf's NAdamW baseline), written out per
# element in plain Python floats (f64). Run: python3 scripts/optimizer_hand_steps.py
import math
P0 = [0.5, -1.5, 2.0]
G = [[0.2, -0.1, 0.0], [-0.3, 0.4, 1.0], [0.05, 0.3, -0.7]]

def run(update, state0):
    p = list(P0); st = [dict(state0) for _ in p]; out = []
    for t, g in enumerate(G, start=1):
        for i in range(3):
            p[i] = update(p[i], g[i], st[i], t)
        out.append(list(p))
    return out

def sgd(lr, mu, damp, nest, wd):
    def u(p, g, s, t):
        g = g + wd * p
        if mu != 0:
            s['b'] = g if t == 1 else mu * s['b'] + (1 - damp) * g
            g = g + mu * s['b'] if nest else s['b']
        return p - lr * g
    return u

def adagrad(lr, lr_decay, wd, init, eps):
    def u(p, g, s, t):
        g = g + wd * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s['sum'] = s.get('sum', init) + g * g
        return p - clr * g / (math.sqrt(s['sum']) + eps)
    return u

def rmsprop(lr, alpha, eps, wd, mu, centered):
    def u(p, g, s, t):
        g = g + wd * p
        s['v'] = alpha * s.get('v', 0) + (1 - alpha) * g * g
        if centered:
            s['a'] = alpha * s.get('a', 0) + (1 - alpha) * g
            avg = math.sqrt(s['v'] - s['a'] ** 2) + eps
        else:
            avg = math.sqrt(s['v']) + eps
        if mu > 0:
            s['b'] = mu * s.get('b', 0) + g / avg
            return p - lr * s['b']
        return p - lr * g / avg
    return u

def adadelta(lr, rho, eps, wd):
    def u(p, g, s, t):
        g = g + wd * p
        s['v'] = rho * s.get('v', 0) + (1 - rho) * g * g
        delta = math.sqrt(s.get('u', 0) + eps) / math.sqrt(s['v'] + eps) * g
        s['u'] = rho * s.get('u', 0) + (1 - rho) * delta * delta
        return p - lr * delta
    return u

def adam(lr, b1, b2, eps, wd, decoupled, nesterov):
    def u(p, g, s, t):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        s['m'] = b1 * s.get('m', 0) + (1 - b1) * g
        s['v'] = b2 * s.get('v', 0) + (1 - b2) * g * g
        n = b1 * s['m'] + (1 - b1) * g if nesterov else s['m']
        return p - lr / (1 - b1 ** t) * n / (math.sqrt(s['v']) / math.sqrt(1 - b2 ** t) + eps)
    return u

cases = {
 'sgd_plain': sgd(0.1, 0, 0, False, 0.01),
 'sgd_momentum_dampening': sgd(0.1, 0.9, 0.2, False, 0.01),
 'sgd_nesterov': sgd(0.1, 0.9, 0, True, 0.0),
 'adagrad': adagrad(0.1, 0.5, 0.01, 0.1, 1e-10),
 'rmsprop_plain': rmsprop(0.01, 0.9, 1e-8, 0.0, 0.0, False),
 'rmsprop_centered_momentum': rmsprop(0.01, 0.9, 1e-8, 0.01, 0.5, True),
 'adadelta': adadelta(1.0, 0.9, 1e-6, 0.01),
 'adam_coupled': adam(0.1, 0.9, 0.999, 1e-8, 0.1, False, False),
 'nadamw': adam(0.1, 0.9, 0.999, 1e-8, 0.1, True, True),
}
for name, u in cases.items():
    print(name)
    for row in run(u, {}):
        print('   [' + ', '.join(repr(x) for x in row) + '],')

# Schedule-Free AdamW (facebookresearch/schedule_free, AdamWScheduleFree.step, r = 0,
# weight_lr_power = 2, no warm-up), per element; y is the parameter, x = the evaluation weights.
def schedule_free(lr, b1, b2, eps, wd):
    y = list(P0); z = list(P0); v = [0.0] * 3
    lr_max = 0.0; weight_sum = 0.0; out = []
    for k, g in enumerate(G):
        lr_max = max(lr_max, lr)
        weight = lr_max ** 2
        weight_sum += weight
        ckp1 = weight / weight_sum
        bc2 = 1 - b2 ** (k + 1)
        for i in range(3):
            v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
            d = g[i] / (math.sqrt(v[i] / bc2) + eps) + wd * y[i]
            y[i] = (1 - ckp1) * y[i] + ckp1 * z[i]
            y[i] += lr * (b1 * (1 - ckp1) - 1) * d
            z[i] -= lr * d
        x = [y[i] + (1 - 1 / b1) * (z[i] - y[i]) for i in range(3)]
        out.append((list(y), x))
    return out

print('schedule_free (y, then x)')
for y, x in schedule_free(0.1, 0.9, 0.999, 1e-8, 0.01):
    print('   [' + ', '.join(repr(a) for a in y) + '],')
    print('   [' + ', '.join(repr(a) for a in x) + '],')
