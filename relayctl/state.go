package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/grant"
)

// statePath is the state file: the spool as the last locked run read it
// (grant.Snapshot), beside the CDB, in a directory only root writes.
func (c *config) statePath() string { return c.CDB + ".state" }

// confirmedPath is the copy of the last confirmed rules (package
// confirmed), beside the CDB like the state file: every writer of the
// CDB holds a rules file that shrank back against it.
func (c *config) confirmedPath() string { return c.CDB + ".rules" }

// foldAt is how many grant files a locked run lets the spool hold before
// it folds them into the folded file (grant.Fold). Below it, reading
// them costs a run a few milliseconds; folding costs a write of every
// grant.
const foldAt = 1000

// sweepChunk is how many folded grant files a run removes per hold of
// the lock after its command is done (see sweepSpool): the watcher
// publishes in between.
const sweepChunk = 200

// grants reads every grant: the folded file, and the spool's grant
// files over it. The state file (or this run's last scan) says which
// grant files are unchanged, and only the others are read; while the
// spool directory itself is unchanged, none is read or stat'ed. With
// save (the caller holds the lock), a changed spool is saved as the new
// state file, and the spool is folded if it holds foldAt grant files or
// more, or claimed files a crash left, or login times in the future
// (folded as the present). The spool stays the truth: a state file that
// is missing, unusable or stale costs time, never a grant. The next call
// of this run may start from the grants returned (see fold): a caller
// does not use them after calling grants again.
func (e *env) grants(save bool) ([]grant.Grant, error) {
	s := e.store()
	path := e.cfg.statePath()
	prev, dirty := e.snap, e.snapDirty
	e.snap, e.snapDirty = nil, false
	bad := false
	if prev == nil && e.cfg.CDB != "" {
		var err error
		prev, err = s.ReadState(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case errors.Is(err, fs.ErrPermission):
			// Not root (relayctl list by a poprelay member): root's
			// state is not for us.
			e.vlogf("%s; reading every grant file", why(err))
		case err != nil:
			e.logf("warning: %s; reading every grant file", why(err))
			bad = errors.Is(err, grant.ErrState)
		}
	}
	fresh := prev == nil
	var prevDir int64
	if prev != nil {
		prevDir = prev.Dir
	}
	snap, st, err := s.Scan(prev, e.now(), e.cfg.MaxAge)
	if err != nil {
		return nil, err
	}
	folded := e.folded
	e.folded = nil
	gs, capped, err := s.Load(snap, folded, time.Now())
	if err != nil {
		return nil, err
	}
	e.vlogf("spool %s: %d grants (%d grant files: %d from the state, %d read, %d new or changed, %d gone)",
		e.cfg.Spool, len(gs), len(snap.Grants), st.Kept, st.Read, st.New, st.Gone)
	e.snap = snap
	if save && !e.noFold && (len(snap.Grants) >= foldAt || capped > 0 || len(snap.Capped) > 0 || len(snap.Claimed) > 0) {
		if err := e.fold(gs, nil); err != nil {
			e.logf("warning: %s", why(err))
		} else {
			e.vlogf("folded %d grant files into %s", len(snap.Grants), filepath.Join(e.cfg.Spool, grant.FoldedName))
		}
		snap, dirty = e.snap, true
	}
	// Saved also when only the directory's change time is new: the next
	// run then reads nothing of an unchanged spool.
	if save && e.cfg.CDB != "" && (fresh || dirty || st.Changed() || snap.Dir != prevDir) {
		if bad {
			// Replaced, not rewritten: its mode would carry over.
			os.Remove(path)
		}
		if err := e.saveState(s, snap); err != nil {
			e.logf("warning: unable to save %s (the next run reads the whole spool): %s", path, why(err))
		}
	}
	return gs, nil
}

// fold makes gs (every grant, as grants returned it, minus those
// dropped) the folded grants (grant.Fold); the caller holds the lock. The
// grant files of dropped addresses that this run read are removed at
// once; the others after the lock is released (sweepSpool). It takes gs
// over: the next grants of this run starts from it without reading the
// folded file.
func (e *env) fold(gs []grant.Grant, dropped []string) error {
	s := e.store()
	inbox := e.snap
	if inbox == nil {
		inbox = &grant.Snapshot{}
	}
	f, err := s.Fold(gs, inbox)
	if f == nil {
		return unable("fold the spool "+e.cfg.Spool, err)
	}
	e.folded = f
	drop := make(map[string]bool, len(dropped))
	for _, ip := range dropped {
		drop[ip] = true
	}
	var now []int
	rest := &grant.Snapshot{Capped: inbox.Capped}
	for i, g := range inbox.Grants {
		if drop[g.IP] {
			now = append(now, i)
			continue
		}
		rest.Grants = append(rest.Grants, g)
		rest.Files = append(rest.Files, inbox.Files[i])
	}
	err = errors.Join(err, s.Sweep(inbox, now))
	e.sweep = rest
	// The files left are as they were: the next scan of this run takes
	// them as they are. (Its own copy: a scan takes its snapshot over.)
	// The temp files it saw are still cleanSpool's to remove.
	e.snap = &grant.Snapshot{Grants: slices.Clone(rest.Grants), Files: slices.Clone(rest.Files), Temps: inbox.Temps}
	e.snapDirty = true
	if err != nil {
		return unable("fold the spool "+e.cfg.Spool, err)
	}
	return nil
}

// sweepSpool removes the grant files a fold of this run left (their
// grants are in the folded file), sweepChunk at a time, each part under
// the lock: the run's command is done, and the watcher publishes in
// between. A part that fails leaves its files for the next fold.
func (e *env) sweepSpool() {
	p := e.sweep
	e.sweep = nil
	if p == nil || len(p.Grants) == 0 {
		return
	}
	s := e.store()
	for from := 0; from < len(p.Grants); from += sweepChunk {
		idx := make([]int, 0, sweepChunk)
		for i := from; i < min(from+sweepChunk, len(p.Grants)); i++ {
			idx = append(idx, i)
		}
		last := from+sweepChunk >= len(p.Grants)
		err := e.lockedOnce(func() error {
			if err := s.Sweep(p, idx); err != nil {
				return err
			}
			if last && e.cfg.CDB != "" {
				// The state file lists the files swept: the next
				// run need not read it to find them gone.
				e.snap = nil
				if err := e.saveState(s, &grant.Snapshot{}); err != nil {
					os.Remove(e.cfg.statePath())
				}
			}
			return nil
		})
		if err != nil {
			e.logf("warning: unable to remove grant files folded into %s (the next fold does): %s", filepath.Join(e.cfg.Spool, grant.FoldedName), why(err))
			return
		}
	}
	e.vlogf("removed %d grant files folded into %s", len(p.Grants), filepath.Join(e.cfg.Spool, grant.FoldedName))
}

// saveState writes the state file: temp file, rename. No fsync: a state
// file torn by a crash fails its checksum and is ignored.
func (e *env) saveState(s *grant.Store, snap *grant.Snapshot) (err error) {
	path := e.cfg.statePath()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if _, err := atomic.Clean(path); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o640); err != nil {
		return err
	}
	if err := s.WriteState(f, snap); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
