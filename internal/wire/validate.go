package wire

import (
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// ErrInvalidField is wrapped by every validation failure; the message names
// the field and what was wrong.
var ErrInvalidField = errors.New("wire: invalid field")

// maxDepth bounds recursion into nested messages.
const maxDepth = 16

// Validate checks msg against the (qpc.v1.rules) options in its schema:
// exact byte lengths (group ids 32, channel ids 16, keys 32), maximum
// lengths, required fields, element counts, and UTF-8 in every string.
func Validate(msg proto.Message) error {
	return validateMessage(msg.ProtoReflect(), 0)
}

func validateMessage(m protoreflect.Message, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: nesting deeper than %d", ErrInvalidField, maxDepth)
	}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		rules := fieldRules(fd)
		if rules.GetRequired() && !m.Has(fd) {
			return fmt.Errorf("%w: %s is required", ErrInvalidField, fd.Name())
		}
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			list := v.List()
			if n := rules.GetMaxItems(); n > 0 && uint32(list.Len()) > n {
				return fmt.Errorf("%w: %s has %d items, at most %d allowed", ErrInvalidField, fd.Name(), list.Len(), n)
			}
			for j := 0; j < list.Len(); j++ {
				if err := validateValue(fd, rules, list.Get(j), depth); err != nil {
					return fmt.Errorf("%w (item %d)", err, j)
				}
			}
		case fd.IsMap():
			var err error
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = validateValue(fd.MapValue(), nil, mv, depth)
				return err == nil
			})
			if err != nil {
				return err
			}
		default:
			if err := validateValue(fd, rules, v, depth); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateValue(fd protoreflect.FieldDescriptor, rules *qpcv1.FieldRules, v protoreflect.Value, depth int) error {
	switch fd.Kind() {
	case protoreflect.BytesKind:
		return checkLen(fd, rules, len(v.Bytes()))
	case protoreflect.StringKind:
		s := v.String()
		if !utf8.ValidString(s) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidField, fd.Name())
		}
		return checkLen(fd, rules, len(s))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return validateMessage(v.Message(), depth+1)
	}
	return nil
}

func checkLen(fd protoreflect.FieldDescriptor, rules *qpcv1.FieldRules, n int) error {
	if want := rules.GetLen(); want > 0 && uint32(n) != want && !(n == 0 && !rules.GetRequired() && !fd.IsList()) {
		return fmt.Errorf("%w: %s is %d bytes, must be %d", ErrInvalidField, fd.Name(), n, want)
	}
	if max := rules.GetMaxLen(); max > 0 && uint32(n) > max {
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrInvalidField, fd.Name(), n, max)
	}
	return nil
}

// rulesCache maps a field descriptor to its rules (nil when it has none).
// Descriptors are fixed at build time, so the map is bounded by the schema;
// reading the option through the extension API on every field of every
// message was most of validation's cost.
var rulesCache sync.Map // protoreflect.FieldDescriptor -> *qpcv1.FieldRules

func fieldRules(fd protoreflect.FieldDescriptor) *qpcv1.FieldRules {
	if r, ok := rulesCache.Load(fd); ok {
		return r.(*qpcv1.FieldRules)
	}
	var r *qpcv1.FieldRules
	if opts := fd.Options(); opts != nil && proto.HasExtension(opts, qpcv1.E_Rules) {
		r, _ = proto.GetExtension(opts, qpcv1.E_Rules).(*qpcv1.FieldRules)
	}
	rulesCache.Store(fd, r)
	return r
}
