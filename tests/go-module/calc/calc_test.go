package calc

import "testing"

func TestAdd(t *testing.T) {
	if got := Add(2, 3); got != 5 {
		t.Errorf("Add(2, 3) = %d, want 5", got)
	}
}

func TestDivide(t *testing.T) {
	t.Run("exact", func(t *testing.T) {
		if got, err := Divide(6, 3); got != 2 || err != nil {
			t.Errorf("Divide(6, 3) = %d, %v; want 2, nil", got, err)
		}
	})
	t.Run("by zero", func(t *testing.T) {
		if _, err := Divide(1, 0); err != ErrDivideByZero {
			t.Errorf("Divide(1, 0) returned error %v, want ErrDivideByZero", err)
		}
	})
}

func TestNeedsNetwork(t *testing.T) {
	t.Skip("no network in the guest")
}
