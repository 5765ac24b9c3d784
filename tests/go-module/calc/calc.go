// Package calc is the code under test in vmlab's Go suite: Divide has a bug
// (it returns no error for a zero divisor) that one of its tests catches.
package calc

import "errors"

// ErrDivideByZero is what Divide should return for a zero divisor.
var ErrDivideByZero = errors.New("divide by zero")

func Add(a, b int) int { return a + b }

func Divide(a, b int) (int, error) {
	if b == 0 {
		return 0, nil // the bug: should be ErrDivideByZero
	}
	return a / b, nil
}
