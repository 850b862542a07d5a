using Vism.Host.Config;

namespace Vism.Host.Tests;

public sealed class DurationTests
{
    [Theory]
    [InlineData("50us", 500L)]
    [InlineData("50\u00b5s", 500L)] // micro sign
    [InlineData("50\u03bcs", 500L)] // Greek mu
    [InlineData("1 us", 10L)]
    [InlineData("500ms", 5_000_000L)]
    [InlineData("5s", 50_000_000L)]
    [InlineData("2m", 1_200_000_000L)]
    [InlineData("1h", 36_000_000_000L)]
    [InlineData("0s", 0L)]
    public void DurationStringsParseToTheExactNumberOfTicks(string text, long ticks)
    {
        Assert.True(TomlValues.TryParseDuration(text, out TimeSpan value), text);
        Assert.Equal(TimeSpan.FromTicks(ticks), value);
    }

    [Theory]
    [InlineData("50")]
    [InlineData("1.5ms")]
    [InlineData("-5ms")]
    [InlineData("5ns")]
    [InlineData("us")]
    [InlineData("99999999999999999h")]
    [InlineData("999999999999999999us")]
    public void BadOrOversizedDurationStringsAreRefusedNotThrown(string text) =>
        Assert.False(TomlValues.TryParseDuration(text, out _));

    [Theory]
    [InlineData(50L, "50us")]
    [InlineData(1500L, "1500us")]
    [InlineData(2000L, "2ms")]
    [InlineData(50_000L, "50ms")]
    [InlineData(3_000_000L, "3s")]
    [InlineData(120_000_000L, "2m")]
    [InlineData(0L, "0s")]
    public void DurationsFormatInTheLargestExactUnitAndReadBack(long microseconds, string text)
    {
        TimeSpan t = TimeSpan.FromMicroseconds(microseconds);
        Assert.Equal(text, TomlValues.FormatDuration(t));
        Assert.True(TomlValues.TryParseDuration(text, out TimeSpan back));
        Assert.Equal(t, back);
    }
}
