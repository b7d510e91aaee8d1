package main

import (
	"slices"
	"testing"
)

func TestMedianKeepsTheMiddleRunAndEveryRound(t *testing.T) {
	rs := []runResult{{TPS: 300, P99Ms: 3}, {TPS: 100, P99Ms: 1}, {TPS: 200, P99Ms: 2}}
	m := median(rs)
	if m.TPS != 200 || m.P99Ms != 2 {
		t.Errorf("median = %+v, want the 200 TPS run with its own p99", m)
	}
	if !slices.Equal(m.RoundTPS, []float64{300, 100, 200}) {
		t.Errorf("RoundTPS = %v, want every round in round order", m.RoundTPS)
	}
	if rs[1].TPS != 100 {
		t.Error("median reordered its argument")
	}
	if even := median([]runResult{{TPS: 4}, {TPS: 1}, {TPS: 3}, {TPS: 2}}); even.TPS != 2 {
		t.Errorf("median of 4 runs = %v TPS, want the lower middle one, 2", even.TPS)
	}
	if one := median([]runResult{{TPS: 7}}); one.TPS != 7 || one.RoundTPS != nil {
		t.Errorf("median of one run = %+v, want it unchanged with no rounds listed", one)
	}
}

func TestRoundRatiosPairRounds(t *testing.T) {
	var r rowResult
	r.setRoundRatios([]runResult{{TPS: 110}, {TPS: 90}}, []runResult{{TPS: 100}, {TPS: 100}, {TPS: 100}})
	if !slices.Equal(r.RoundRatios, []float64{1.1, 0.9}) {
		t.Errorf("RoundRatios = %v, want [1.1 0.9] (rounds both completed)", r.RoundRatios)
	}
	if got := ratioRange(r.RoundRatios); got != "0.90-1.10x" {
		t.Errorf("ratioRange = %q, want 0.90-1.10x", got)
	}
	if got := ratioRange([]float64{1}); got != "-" {
		t.Errorf("ratioRange of one round = %q, want -", got)
	}
}
