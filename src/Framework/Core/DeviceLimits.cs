namespace Vism.Core;

/// <summary>
/// How much of its loop and of the host one device may take, so that a hostile or broken driver
/// cannot starve the other devices on its loop (<c>[[device]]</c> keys <c>requests-per-turn</c>,
/// <c>descriptors-per-turn</c>, <c>max-in-flight</c>). The regions a device references are limited
/// by its <c>max-regions</c> slots.
/// </summary>
public sealed record DeviceLimits
{
    /// <summary>The defaults.</summary>
    public static DeviceLimits Default { get; } = new();

    /// <summary>Control requests served in one loop turn before the device yields the loop to the
    /// other devices (default 16).</summary>
    public int RequestsPerTurn { get; init; } = 16;

    /// <summary>Descriptors walked in one loop turn before the device yields the loop (default
    /// 4096). One chain is always walked whole; a chain of 32,768 descriptors (one full indirect
    /// table) therefore ends the turn after it.</summary>
    public int DescriptorsPerTurn { get; init; } = 4096;

    /// <summary>Chains the device holds popped and not yet completed, over all its queues (default
    /// 512: every entry of a 256-entry controlq and event queue). Past it the device stops taking
    /// buffers until it completes some.</summary>
    public int MaxInFlight { get; init; } = 512;

    /// <summary>Why these limits cannot be used, or null.</summary>
    public string? Validate()
    {
        if (RequestsPerTurn is < 1 or > 65536) return $"requests-per-turn {RequestsPerTurn} is outside 1..65536";
        if (DescriptorsPerTurn is < 1 or > 1 << 24) return $"descriptors-per-turn {DescriptorsPerTurn} is outside 1..16777216";
        if (MaxInFlight is < 2 or > 65536) return $"max-in-flight {MaxInFlight} is outside 2..65536";
        return null;
    }
}
