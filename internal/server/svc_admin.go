package server

import "context"

// adminPart holds the admin service's state inside Server.
type adminPart struct{}

func (s *Server) initAdmin(ctx context.Context) error { return nil }

func (s *Server) closeAdmin() error { return nil }
