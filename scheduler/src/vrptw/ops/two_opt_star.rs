//! 2-opt*: exchange route tails so that `u` is followed by `v`:
//! `A[..=u] + B[v..]` and `B[..v] + A[u+1..]`.

use crate::vrptw::state::{concat_ok, State};

#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub delta: f64,
    ra: usize,
    rb: usize,
    pu: usize,
    pv: usize,
}

pub(crate) fn evaluate(st: &State, u: usize, v: usize) -> Option<Move> {
    let inst = st.inst;
    let (ra, rb) = (st.route_of[u], st.route_of[v]);
    if ra == rb {
        return None;
    }
    let (pu, pv) = (st.pos_of[u], st.pos_of[v]);
    let (a, b) = (&st.routes[ra], &st.routes[rb]);
    let an = a.nodes[pu + 1];
    let bp = b.nodes[pv - 1];
    let delta = inst.d(u, v) + inst.d(bp, an) - inst.d(u, an) - inst.d(bp, v);
    if delta >= -1e-9 {
        return None;
    }
    let la = a.load[pu] + (b.total_load() - b.load[pv - 1]);
    let lb = b.load[pv - 1] + (a.total_load() - a.load[pu]);
    if la > inst.capacity || lb > inst.capacity {
        return None;
    }
    if !concat_ok(inst, a, pu, std::iter::empty(), b, pv) || !concat_ok(inst, b, pv - 1, std::iter::empty(), a, pu + 1)
    {
        return None;
    }
    Some(Move { delta, ra, rb, pu, pv })
}

pub(crate) fn apply(st: &mut State, m: Move) {
    let (a, b) = (&st.routes[m.ra], &st.routes[m.rb]);
    let an = a.nodes.len() - 1;
    let bn = b.nodes.len() - 1;
    let mut ca: Vec<usize> = a.nodes[1..=m.pu].to_vec();
    ca.extend_from_slice(&b.nodes[m.pv..bn]);
    let mut cb: Vec<usize> = b.nodes[1..m.pv].to_vec();
    cb.extend_from_slice(&a.nodes[m.pu + 1..an]);
    st.set_two(m.ra, ca, m.rb, cb);
}
