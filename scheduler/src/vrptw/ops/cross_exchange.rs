//! Cross-exchange: swap the string of `la` customers starting at `u` with the
//! string of `lb` customers starting at `v` (different routes, 1..=3 each,
//! not both 1 — that is [`super::swap`]).

use crate::vrptw::state::{concat_ok, State};

#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub delta: f64,
    ra: usize,
    rb: usize,
    pu: usize,
    pv: usize,
    la: usize,
    lb: usize,
}

pub(crate) fn evaluate(st: &State, u: usize, v: usize, la: usize, lb: usize) -> Option<Move> {
    let inst = st.inst;
    let (ra, rb) = (st.route_of[u], st.route_of[v]);
    if ra == rb {
        return None;
    }
    let (pu, pv) = (st.pos_of[u], st.pos_of[v]);
    let (a, b) = (&st.routes[ra], &st.routes[rb]);
    let (ea, eb) = (pu + la - 1, pv + lb - 1);
    if ea > a.len() || eb > b.len() {
        return None;
    }
    let (ap, an) = (a.nodes[pu - 1], a.nodes[ea + 1]);
    let (bp, bn) = (b.nodes[pv - 1], b.nodes[eb + 1]);
    let (a0, a1, b0, b1) = (a.nodes[pu], a.nodes[ea], b.nodes[pv], b.nodes[eb]);
    let delta = inst.d(ap, b0) + inst.d(b1, an) + inst.d(bp, a0) + inst.d(a1, bn)
        - inst.d(ap, a0)
        - inst.d(a1, an)
        - inst.d(bp, b0)
        - inst.d(b1, bn);
    if delta >= -1e-9 {
        return None;
    }
    let qa = a.load[ea] - a.load[pu - 1];
    let qb = b.load[eb] - b.load[pv - 1];
    if a.total_load() - qa + qb > inst.capacity || b.total_load() - qb + qa > inst.capacity {
        return None;
    }
    if !concat_ok(inst, a, pu - 1, b.nodes[pv..=eb].iter().copied(), a, ea + 1)
        || !concat_ok(inst, b, pv - 1, a.nodes[pu..=ea].iter().copied(), b, eb + 1)
    {
        return None;
    }
    Some(Move { delta, ra, rb, pu, pv, la, lb })
}

pub(crate) fn apply(st: &mut State, m: Move) {
    let (a, b) = (&st.routes[m.ra], &st.routes[m.rb]);
    let an = a.nodes.len() - 1;
    let bn = b.nodes.len() - 1;
    let mut ca = a.nodes[1..m.pu].to_vec();
    ca.extend_from_slice(&b.nodes[m.pv..m.pv + m.lb]);
    ca.extend_from_slice(&a.nodes[m.pu + m.la..an]);
    let mut cb = b.nodes[1..m.pv].to_vec();
    cb.extend_from_slice(&a.nodes[m.pu..m.pu + m.la]);
    cb.extend_from_slice(&b.nodes[m.pv + m.lb..bn]);
    st.set_two(m.ra, ca, m.rb, cb);
}
