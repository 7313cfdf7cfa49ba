//! Search-side solution representation: routes with cached forward earliest
//! starts, backward latest starts and prefix loads, so that any candidate route
//! written as `prefix + middle + suffix` is checked in O(|middle|).

use super::Instance;

/// One route with its caches. `nodes` is `[0, c1, .., ck, 0]`.
/// Invariant (after [`Route::recompute`]): `es[k] <= due[nodes[k]]` for every k
/// up to floating rounding, `ls[k] >= es[k]`, `load[k]` = demand of `nodes[..=k]`.
#[derive(Debug)]
pub(crate) struct Route {
    pub nodes: Vec<usize>,
    pub es: Vec<f64>,
    pub ls: Vec<f64>,
    pub load: Vec<i64>,
    pub dist: f64,
}

impl Clone for Route {
    fn clone(&self) -> Self {
        Route {
            nodes: self.nodes.clone(),
            es: self.es.clone(),
            ls: self.ls.clone(),
            load: self.load.clone(),
            dist: self.dist,
        }
    }

    /// Reuses this route's buffers (the SISR loop copies solutions every iteration).
    fn clone_from(&mut self, src: &Self) {
        self.nodes.clone_from(&src.nodes);
        self.es.clone_from(&src.es);
        self.ls.clone_from(&src.ls);
        self.load.clone_from(&src.load);
        self.dist = src.dist;
    }
}

impl Route {
    pub fn new(inst: &Instance, customers: &[usize]) -> Self {
        let mut nodes = Vec::with_capacity(customers.len() + 2);
        nodes.push(0);
        nodes.extend_from_slice(customers);
        nodes.push(0);
        let mut r = Route { nodes, es: Vec::new(), ls: Vec::new(), load: Vec::new(), dist: 0.0 };
        r.recompute(inst);
        r
    }

    pub fn recompute(&mut self, inst: &Instance) {
        let n = self.nodes.len();
        self.es.clear();
        self.ls.clear();
        self.load.clear();
        self.es.resize(n, 0.0);
        self.ls.resize(n, 0.0);
        self.load.resize(n, 0);
        self.es[0] = inst.ready[0];
        let mut dist = 0.0;
        for k in 1..n {
            let (p, c) = (self.nodes[k - 1], self.nodes[k]);
            dist += inst.d(p, c);
            self.es[k] = (self.es[k - 1] + inst.service[p] + inst.d(p, c)).max(inst.ready[c]);
            self.load[k] = self.load[k - 1] + inst.demand[c];
        }
        self.ls[n - 1] = inst.due[0];
        for k in (0..n - 1).rev() {
            let (c, nx) = (self.nodes[k], self.nodes[k + 1]);
            self.ls[k] = inst.due[c].min(self.ls[k + 1] - inst.d(c, nx) - inst.service[c]);
        }
        self.dist = dist;
    }

    /// Number of customers.
    pub fn len(&self) -> usize {
        self.nodes.len() - 2
    }

    pub fn total_load(&self) -> i64 {
        self.load[self.nodes.len() - 1]
    }

    pub fn customers(&self) -> &[usize] {
        &self.nodes[1..self.nodes.len() - 1]
    }
}

/// Is `prefix(ra, i) + middle + suffix(rb, j)` time-feasible? `i` is the last
/// kept position of `ra`, `j` the first kept position of `rb` (may be the end depot).
#[inline]
pub(crate) fn concat_ok(
    inst: &Instance,
    ra: &Route,
    i: usize,
    middle: impl IntoIterator<Item = usize>,
    rb: &Route,
    j: usize,
) -> bool {
    let mut p = ra.nodes[i];
    let mut t = ra.es[i] + inst.service[p];
    for m in middle {
        let st = (t + inst.d(p, m)).max(inst.ready[m]);
        if st > inst.due[m] {
            return false;
        }
        t = st + inst.service[m];
        p = m;
    }
    let nx = rb.nodes[j];
    let st = (t + inst.d(p, nx)).max(inst.ready[nx]);
    st <= rb.ls[j]
}

/// Full simulation of a customer list: `Some(distance)` if feasible.
pub(crate) fn simulate(inst: &Instance, customers: &[usize]) -> Option<f64> {
    let mut p = 0;
    let mut t = inst.ready[0];
    let mut load = 0;
    let mut dist = 0.0;
    for &c in customers {
        load += inst.demand[c];
        dist += inst.d(p, c);
        t = (t + inst.service[p] + inst.d(p, c)).max(inst.ready[c]);
        if t > inst.due[c] {
            return None;
        }
        p = c;
    }
    dist += inst.d(p, 0);
    if load > inst.capacity || t + inst.service[p] + inst.d(p, 0) > inst.due[0] {
        return None;
    }
    Some(dist)
}

/// A whole solution under search.
#[derive(Debug)]
pub(crate) struct State<'a> {
    pub inst: &'a Instance,
    pub routes: Vec<Route>,
    /// Route index of each customer (`usize::MAX` = unrouted).
    pub route_of: Vec<usize>,
    /// Position of each customer in its route's `nodes`.
    pub pos_of: Vec<usize>,
}

impl Clone for State<'_> {
    fn clone(&self) -> Self {
        State {
            inst: self.inst,
            routes: self.routes.clone(),
            route_of: self.route_of.clone(),
            pos_of: self.pos_of.clone(),
        }
    }

    fn clone_from(&mut self, src: &Self) {
        self.inst = src.inst;
        self.routes.clone_from(&src.routes);
        self.route_of.clone_from(&src.route_of);
        self.pos_of.clone_from(&src.pos_of);
    }
}

impl<'a> State<'a> {
    pub fn empty(inst: &'a Instance) -> Self {
        let n = inst.n_nodes();
        State { inst, routes: Vec::new(), route_of: vec![usize::MAX; n], pos_of: vec![0; n] }
    }

    pub fn cost(&self) -> f64 {
        self.routes.iter().map(|r| r.dist).sum()
    }

    fn reindex(&mut self, r: usize) {
        let route = &self.routes[r];
        for (k, &c) in route.nodes.iter().enumerate() {
            if c != 0 {
                self.route_of[c] = r;
                self.pos_of[c] = k;
            }
        }
    }

    /// Replaces route `r`'s customers (removing the route if empty).
    pub fn set_route(&mut self, r: usize, customers: &[usize]) {
        if customers.is_empty() {
            for &c in self.routes[r].customers() {
                self.route_of[c] = usize::MAX;
            }
            self.routes.swap_remove(r);
            if r < self.routes.len() {
                self.reindex(r);
            }
            return;
        }
        // Customers dropped from this route become unrouted unless re-added.
        for &c in self.routes[r].customers() {
            if self.route_of[c] == r {
                self.route_of[c] = usize::MAX;
            }
        }
        self.routes[r] = Route::new(self.inst, customers);
        self.reindex(r);
    }

    /// Replaces two distinct routes at once (handles removal order).
    pub fn set_two(&mut self, a: usize, ca: Vec<usize>, b: usize, cb: Vec<usize>) {
        debug_assert_ne!(a, b);
        // Clear old membership first so that moved customers end up correct.
        for &c in self.routes[a].customers().iter().chain(self.routes[b].customers()) {
            self.route_of[c] = usize::MAX;
        }
        self.routes[a] = Route::new(self.inst, &ca);
        self.routes[b] = Route::new(self.inst, &cb);
        self.reindex(a);
        self.reindex(b);
        // Remove empty routes, higher index first.
        let (hi, lo) = if a > b { (a, b) } else { (b, a) };
        for r in [hi, lo] {
            if self.routes[r].len() == 0 {
                self.routes.swap_remove(r);
                if r < self.routes.len() {
                    self.reindex(r);
                }
            }
        }
    }

    pub fn add_route(&mut self, customers: &[usize]) {
        self.routes.push(Route::new(self.inst, customers));
        let r = self.routes.len() - 1;
        self.reindex(r);
    }

    pub fn to_solution(&self) -> super::Solution {
        super::Solution { routes: self.routes.iter().map(|r| r.customers().to_vec()).collect(), cost: self.cost() }
    }
}
