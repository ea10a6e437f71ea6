package grant

import "time"

// expire removes every grant whose Expiry(maxAge) is at or before now and
// returns the removed grants, from the same parts relayctl expire puts
// together (with its state file, and its sweep spread over lock holds):
// the grants as listed, a login time more than Skew after now capped, Split,
// Fold without the expired ones, and Sweep. The tests here use it to age
// a spool.
func expire(s *Store, now time.Time, maxAge time.Duration) ([]Grant, error) {
	gs, snap, err := s.list(now, false)
	if err != nil {
		return nil, err
	}
	capped := 0
	for i := range gs {
		if s.capTime(&gs[i], now) {
			capped++
		}
	}
	live, gone := Split(gs, now, maxAge)
	if len(gone) == 0 && capped == 0 {
		return nil, nil
	}
	if _, err := s.Fold(live, snap); err != nil {
		return nil, err
	}
	return gone, s.Sweep(snap, All(len(snap.Grants)))
}
