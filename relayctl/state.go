package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/grant"
)

// statePath is the state file: the spool as the last locked run read it
// (grant.Snapshot), beside the CDB, in a directory only root writes.
func (c *config) statePath() string { return c.CDB + ".state" }

// grants reads the spool: the state file (or this run's last scan) says
// which grant files are unchanged, and only the others are read; while
// the spool directory itself is unchanged, none is read or stat'ed. With
// save (the caller holds the lock), a changed spool is saved as the new
// state file. The spool stays the truth: a state file that is missing,
// unusable or stale costs time, never a grant.
func (e *env) grants(save bool) (*grant.Snapshot, error) {
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
	e.vlogf("spool %s: %d entries, %d grants (%d from the state, %d files read, %d new or changed, %d gone)",
		e.cfg.Spool, st.Entries, len(snap.Grants), st.Kept, st.Read, st.New, st.Gone)
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
	e.snap = snap
	return snap, nil
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
