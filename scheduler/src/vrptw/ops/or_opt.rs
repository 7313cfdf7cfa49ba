//! Or-opt: move the string of 2 or 3 customers starting at `u` to right after
//! `v` in another route (orientation kept).

use crate::vrptw::state::{concat_ok, State};

#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub delta: f64,
    ra: usize,
    rb: usize,
    pu: usize,
    pv: usize,
    len: usize,
}

pub(crate) fn evaluate(st: &State, u: usize, v: usize, len: usize) -> Option<Move> {
    let inst = st.inst;
    let (ra, rb) = (st.route_of[u], st.route_of[v]);
    if ra == rb {
        return None;
    }
    let (pu, pv) = (st.pos_of[u], st.pos_of[v]);
    let (a, b) = (&st.routes[ra], &st.routes[rb]);
    let last = pu + len - 1;
    if last > a.len() {
        return None;
    }
    let seg = &a.nodes[pu..=last];
    let (p, n) = (a.nodes[pu - 1], a.nodes[last + 1]);
    let (x, y) = (v, b.nodes[pv + 1]);
    let (s0, s1) = (seg[0], seg[len - 1]);
    let delta = inst.d(p, n) - inst.d(p, s0) - inst.d(s1, n) + inst.d(x, s0) + inst.d(s1, y) - inst.d(x, y);
    if delta >= -1e-9 {
        return None;
    }
    let q = a.load[last] - a.load[pu - 1];
    if b.total_load() + q > inst.capacity {
        return None;
    }
    if !concat_ok(inst, a, pu - 1, std::iter::empty(), a, last + 1)
        || !concat_ok(inst, b, pv, seg.iter().copied(), b, pv + 1)
    {
        return None;
    }
    Some(Move { delta, ra, rb, pu, pv, len })
}

pub(crate) fn apply(st: &mut State, m: Move) {
    let (a, b) = (&st.routes[m.ra], &st.routes[m.rb]);
    let seg: Vec<usize> = a.nodes[m.pu..m.pu + m.len].to_vec();
    let mut ca = a.customers().to_vec();
    ca.drain(m.pu - 1..m.pu - 1 + m.len);
    let mut cb = b.customers().to_vec();
    for (k, &c) in seg.iter().enumerate() {
        cb.insert(m.pv + k, c);
    }
    st.set_two(m.ra, ca, m.rb, cb);
}
