using Vism.Abstractions;

namespace Vism.Memory.Shared;

/// <summary>Human-readable sizes for messages ("2 MiB", "1 GiB", "12288 bytes").</summary>
internal static class Sizes
{
    public const ulong KiB = 1UL << 10;
    public const ulong MiB = 1UL << 20;
    public const ulong GiB = 1UL << 30;

    public static string Format(ulong bytes) => ByteSizes.Format(bytes, prose: true);
}
