package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/share"
)

// getenv is e.lookup for code that wants os.Getenv's shape.
func (e *env) getenv(k string) string { v, _ := e.lookup(k); return v }

// cluster opens etcd as configured by the --etcd-* flags and the
// POPRELAY_ETCD_* variables; nil if no endpoint is configured. It warns,
// once, about a configuration that lets others open the relay (see
// share.Config.Security).
func (e *env) cluster(f *share.Flags) (*share.Cluster, error) {
	cfg, err := f.Resolve(e.getenv)
	if err != nil {
		return nil, perm("%v", err)
	}
	if !cfg.Enabled() {
		return nil, nil
	}
	for _, w := range cfg.Security().Warnings {
		e.logf("warning: %s", w)
	}
	c, err := share.Open(cfg, share.Options{
		MaxAge: e.cfg.MaxAge,
		Logf:   func(format string, args ...any) { e.logf("etcd: "+format, args...) },
		Now:    e.now,
	})
	if errors.Is(err, share.ErrConfig) {
		return nil, perm("%v", err)
	}
	if err != nil {
		return nil, etcdErr("log in to etcd", err)
	}
	return c, nil
}

// etcdErr is the failure of an etcd operation: permanent if etcd denied
// it (credentials, roles), else temporary.
func etcdErr(what string, err error) error {
	if errors.Is(err, share.ErrDenied) {
		return perm("unable to %s: %s; the roles poprelay needs are in docs/etcd.md", what, err)
	}
	return unable(what, err)
}

// needCluster is cluster for a command that was asked to use etcd.
func (e *env) needCluster(f *share.Flags, why string) (*share.Cluster, error) {
	c, err := e.cluster(f)
	if err == nil && c == nil {
		err = usagef("%s needs etcd endpoints (--etcd-endpoints or %s)", why, share.EnvEndpoints)
	}
	return c, err
}

// requestCtx bounds one command's etcd work.
func requestCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// lister adapts a List function to list's source.
type lister func() ([]grant.Grant, error)

func (l lister) List() ([]grant.Grant, error) { return l() }

// dropRevoked removes ip from the local spool if its login is not newer
// than a cluster-wide revocation at at.
func (e *env) dropRevoked(ip string, at time.Time) {
	// Under the lock: a folded grant goes by rewriting the folded file
	// (read once, there). A login since the revocation stays, even one
	// that lands now.
	var ok bool
	err := e.locked(func() (err error) {
		ok, err = e.store().RemoveBefore(ip, at)
		return err
	})
	if err != nil {
		e.logf("warning: unable to remove %s revoked cluster-wide: %s", ip, why(err))
	} else if ok {
		e.logf("revoked cluster-wide at %s: removed %s", at.Format(time.RFC3339), ip)
	}
}

// sourceFlag checks a --source or --publish value.
func sourceFlag(name, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return usagef("--%s %q: want %v", name, v, fmt.Sprint(allowed))
}
