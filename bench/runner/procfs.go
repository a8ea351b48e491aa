package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procStat is the part of /proc/PID/stat the harness needs.
type procStat struct {
	pid, ppid, pgrp int
	cpu             int64 // utime + stime, in clock ticks
	reaped          int64 // cutime + cstime: children waited for (socat's forks)
	start           int64 // start time after boot, in clock ticks
}

// parseStat reads the fields after the command name, which is in parentheses
// and may itself contain spaces and parentheses.
func parseStat(pid int, b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("stat of %d: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[n-3] is field n of proc(5): f[0] state, f[1] ppid, f[2] pgrp,
	// f[11] utime, f[12] stime, f[13] cutime, f[14] cstime, f[19] starttime.
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("stat of %d: short", pid)
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	utime, err3 := strconv.ParseInt(f[11], 10, 64)
	stime, err4 := strconv.ParseInt(f[12], 10, 64)
	cutime, err5 := strconv.ParseInt(f[13], 10, 64)
	cstime, err6 := strconv.ParseInt(f[14], 10, 64)
	start, err7 := strconv.ParseInt(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
		return procStat{}, fmt.Errorf("stat of %d: %w", pid, err)
	}
	return procStat{pid: pid, ppid: ppid, pgrp: pgrp, cpu: utime + stime, reaped: cutime + cstime, start: start}, nil
}

// allProcs lists every process; ones that vanish while listing are skipped.
func allProcs() []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, err := parseStat(pid, b); err == nil {
			out = append(out, st)
		}
	}
	return out
}

// groupMembers returns the live processes of process group pgid.
func groupMembers(pgid int) []int {
	var out []int
	for _, p := range allProcs() {
		if p.pgrp == pgid {
			out = append(out, p.pid)
		}
	}
	return out
}

// tree returns roots and all their live descendants.
func tree(roots []int) []int { return descendants(allProcs(), roots) }

// descendants returns roots and their descendants among all.
func descendants(all []procStat, roots []int) []int {
	kids := map[int][]int{}
	for _, p := range all {
		kids[p.ppid] = append(kids[p.ppid], p.pid)
	}
	seen := map[int]bool{}
	var out []int
	queue := append([]int(nil), roots...)
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		queue = append(queue, kids[pid]...)
	}
	return out
}

// usage is what a process tree holds at one moment.
type usage struct {
	procs  int
	rssKiB float64 // sum of VmRSS: counts shared pages once per process
	pssKiB float64 // sum of Pss: shared pages split between their users
	fds    int
}

// treeCPU returns the CPU time, in seconds, that roots and their
// descendants have used so far: the live processes' own time plus what
// they collected from children they waited for. A fork per connection
// (socat) is counted whether the child is still running or already reaped,
// so the difference of two readings is what the tree used in between.
// One listing of /proc serves both the tree and the times.
func treeCPU(roots []int) float64 {
	all := allProcs()
	byPid := make(map[int]procStat, len(all))
	for _, p := range all {
		byPid[p.pid] = p
	}
	var ticks int64
	for _, pid := range descendants(all, roots) {
		if p, ok := byPid[pid]; ok {
			ticks += p.cpu + p.reaped
		}
	}
	return float64(ticks) / clockTicks
}

func treeUsage(roots []int) usage {
	var u usage
	for _, pid := range tree(roots) {
		dir := "/proc/" + strconv.Itoa(pid)
		rss, err := kibField(dir+"/status", "VmRSS:")
		if err != nil {
			continue // exited meanwhile
		}
		pss, _ := kibField(dir+"/smaps_rollup", "Pss:")
		fds, _ := os.ReadDir(dir + "/fd")
		u.procs++
		u.rssKiB += rss
		u.pssKiB += pss
		u.fds += len(fds)
	}
	return u
}

// machineUsedKiB is MemTotal - MemAvailable: what the whole machine holds,
// kernel socket buffers included.
func machineUsedKiB() (float64, error) {
	total, err := kibField("/proc/meminfo", "MemTotal:")
	if err != nil {
		return 0, err
	}
	avail, err := kibField("/proc/meminfo", "MemAvailable:")
	if err != nil {
		return 0, err
	}
	return total - avail, nil
}

// kibField reads a "Key:   123 kB" line.
func kibField(path, key string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, key); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				break
			}
			return strconv.ParseFloat(fields[0], 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// timeWaitSockets reads the "tw" count of the TCP line of /proc/net/sockstat.
func timeWaitSockets() (int, error) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, err
	}
	return parseSockstatTW(string(b))
}

func parseSockstatTW(s string) (int, error) {
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			if f[i] == "tw" {
				return strconv.Atoi(f[i+1])
			}
		}
	}
	return 0, fmt.Errorf("sockstat: no TCP tw")
}

// clockTicks is USER_HZ, which Linux fixes at 100 for /proc.
const clockTicks = 100

// foreignCPU is a reading of the CPU time used by processes that are not the
// runner or its descendants, and not kernel threads (softirq work on loopback
// is caused by the measurement itself).
type foreignCPU struct {
	at    time.Time
	procs map[[2]int64]int64 // (pid, start) -> ticks
}

// notForeign returns the runner, its descendants and the kernel threads.
func notForeign(all []procStat) map[int]bool {
	kids := map[int][]int{}
	for _, p := range all {
		kids[p.ppid] = append(kids[p.ppid], p.pid)
	}
	ours := map[int]bool{}
	for _, root := range []int{os.Getpid(), 2} { // 2 is kthreadd
		queue := []int{root}
		for len(queue) > 0 {
			pid := queue[0]
			queue = queue[1:]
			if !ours[pid] {
				ours[pid] = true
				queue = append(queue, kids[pid]...)
			}
		}
	}
	return ours
}

// foreignPssKiB sums the PSS of every process outside the harness, so that
// their growth or exit between two readings of the machine can be taken out.
func foreignPssKiB() float64 {
	all := allProcs()
	ours := notForeign(all)
	var sum float64
	for _, p := range all {
		if !ours[p.pid] {
			pss, _ := kibField("/proc/"+strconv.Itoa(p.pid)+"/smaps_rollup", "Pss:")
			sum += pss
		}
	}
	return sum
}

func readForeignCPU() foreignCPU {
	all := allProcs()
	ours := notForeign(all)
	f := foreignCPU{at: time.Now(), procs: map[[2]int64]int64{}}
	for _, p := range all {
		if !ours[p.pid] {
			f.procs[[2]int64{int64(p.pid), p.start}] = p.cpu
		}
	}
	return f
}

// busySince returns the foreign CPU used since f, in percent of one CPU.
// Processes that started and ended in between are missed; long-running jobs
// (tests, fuzzers, builds) are what it is for.
func (f foreignCPU) busySince() float64 {
	now := readForeignCPU()
	var ticks int64
	for k, t := range now.procs {
		ticks += t - f.procs[k] // a new process counts from zero
	}
	secs := now.at.Sub(f.at).Seconds()
	if secs <= 0 {
		return 0
	}
	return float64(ticks) / clockTicks / secs * 100
}
