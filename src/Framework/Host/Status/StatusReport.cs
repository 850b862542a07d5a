using System.Text.Json;
using System.Text.Json.Serialization;

namespace Vism.Host.Status;

/// <summary>What <c>vism status</c> prints: a running host's devices, regions, counters and memory use.
/// Sent as JSON over the status socket; tokens are never shown in full.</summary>
public sealed record StatusReport
{
    public required string Version { get; init; }
    public required int Pid { get; init; }
    public required string Config { get; init; }
    public required DateTimeOffset Started { get; init; }
    public required string Gid { get; init; }
    public required string Sharing { get; init; }
    public required IReadOnlyList<DeviceReport> Devices { get; init; }
    public required IReadOnlyList<RegionReport> Regions { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.KebabCaseLower,
        WriteIndented = true,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower) },
    };
}

/// <summary>One device of a <see cref="StatusReport"/>.</summary>
public sealed record DeviceReport
{
    public required string Name { get; init; }
    public required ulong DevId { get; init; }
    public required string Endpoint { get; init; }
    public required string Transport { get; init; }
    public required string Memory { get; init; }
    public required string? Events { get; init; }
    public required string Status { get; init; }
    public required bool Connected { get; init; }
    public required int RegionsInUse { get; init; }
    public required int MaxRegions { get; init; }
    public required ulong MemoryCapacity { get; init; }
    public required ulong MemoryUsed { get; init; }
    public required ulong MemoryHighWater { get; init; }
    public required IReadOnlyDictionary<string, long> Counters { get; init; }
}

/// <summary>One region of a <see cref="StatusReport"/>.</summary>
public sealed record RegionReport
{
    public required string TokenHint { get; init; }
    public required ulong Size { get; init; }
    public required ulong Length { get; init; }
    public required ulong OwnerDevId { get; init; }
    public required ulong HomeDevId { get; init; }
    public required bool Recovered { get; init; }
    public required IReadOnlyList<RegionReferenceReport> References { get; init; }
}

/// <summary>A device referencing a region, and where the region sits in its window.</summary>
public sealed record RegionReferenceReport(ulong DevId, ulong Offset);
