package server

import (
	"context"
	"errors"
)

// initServices builds the service areas in dependency order: the key log
// (auth appends to it in its own transactions), auth
// (everything else needs principals), then the KeyPackage directory and the
// delivery service, then the admin API, which can see all of them.
func (s *Server) initServices(ctx context.Context) error {
	for _, init := range []func(context.Context) error{s.initKeyLog, s.initAuth, s.initDirectory, s.initDelivery, s.initAdmin} {
		if err := init(ctx); err != nil {
			return err
		}
	}
	return nil
}

// closeServices stops background work (sweepers, admin socket) in reverse order.
func (s *Server) closeServices() error {
	return errors.Join(s.closeAdmin(), s.closeDelivery(), s.closeDirectory(), s.closeAuth(), s.closeKeyLog())
}
