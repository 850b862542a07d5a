using System.Globalization;

namespace Vism.Abstractions;

/// <summary>The one way vism writes a byte count: in the largest binary unit (KiB..TiB) that divides
/// it exactly, as a config file writes it (<c>2MiB</c>, <c>12288</c>) or spaced for prose in a
/// message (<c>2 MiB</c>, <c>12288 bytes</c>).</summary>
public static class ByteSizes
{
    /// <summary>Formats <paramref name="bytes"/>.</summary>
    /// <param name="bytes">The count.</param>
    /// <param name="prose">False: the config form (<c>1GiB</c>, a bare number otherwise); true: the
    /// message form (<c>1 GiB</c>, <c>N bytes</c> otherwise).</param>
    /// <returns>The text.</returns>
    public static string Format(ulong bytes, bool prose = false)
    {
        if (bytes != 0)
            foreach ((string name, int shift) in (ReadOnlySpan<(string, int)>)[("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)])
                if (bytes % (1UL << shift) == 0)
                    return prose ? $"{bytes >> shift} {name}" : $"{bytes >> shift}{name}";
        string n = bytes.ToString(CultureInfo.InvariantCulture);
        return prose ? $"{n} bytes" : n;
    }
}
