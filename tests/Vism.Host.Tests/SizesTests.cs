using Vism.Host.Config;

namespace Vism.Host.Tests;

public sealed class SizesTests
{
    [Theory]
    [InlineData("4096", 4096UL)]
    [InlineData("1MiB", 1UL << 20)]
    [InlineData("2 GiB", 2UL << 30)]
    [InlineData("64K", 64UL << 10)]
    [InlineData("1tib", 1UL << 40)]
    [InlineData("16 B", 16UL)]
    [InlineData("1_048_576", 1UL << 20)]
    public void SizeStringsParseAsBinaryUnits(string text, ulong expected)
    {
        Assert.True(Sizes.TryParse(text, out ulong bytes, out string? error), error);
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("1MB", "ambiguous")]
    [InlineData("lots", "is not a size")]
    [InlineData("-1MiB", "is not a size")]
    [InlineData("1.5GiB", "is not a size")]
    [InlineData("", "is not a size")]
    [InlineData("99999999999TiB", "too large")]
    public void BadSizeStringsAreRefusedWithAReason(string text, string reason)
    {
        Assert.False(Sizes.TryParse(text, out _, out string? error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData(1UL << 20, "1MiB")]
    [InlineData(3UL << 30, "3GiB")]
    [InlineData(1536UL, "1536")]
    [InlineData(1536UL << 10, "1536KiB")]
    public void SizesFormatInTheLargestExactUnit(ulong bytes, string text)
    {
        Assert.Equal(text, Sizes.Format(bytes));
        Assert.True(Sizes.TryParse(text, out ulong back, out _));
        Assert.Equal(bytes, back);
    }
}
