using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Vism.Core.Registry;

/// <summary>
/// Region tokens: a 64-bit block cipher in counter mode. A key drawn from the system CSPRNG
/// (<see cref="RandomNumberGenerator"/>) drives an 8-round Feistel network whose round function is
/// AES-256; applying it to a counter yields values that are unpredictable without the key and,
/// because the network is a permutation of 64-bit values, never repeat for 2^64 draws - without
/// remembering the tokens handed out. Zero is skipped. Not thread-safe (the host calls it under its lock).
/// </summary>
internal sealed class TokenSequence : IDisposable
{
    private const int Rounds = 8;
    private readonly Aes _aes;
    private readonly ICryptoTransform _encrypt;
    private readonly byte[] _input = new byte[16];
    private readonly byte[] _output = new byte[16];
    private ulong _counter;

    public TokenSequence()
    {
        _aes = Aes.Create();
        _aes.Key = RandomNumberGenerator.GetBytes(32);
        _aes.Mode = CipherMode.ECB;
        _aes.Padding = PaddingMode.None;
        _encrypt = _aes.CreateEncryptor();
    }

    /// <summary>The next token (never 0, never one returned before).</summary>
    public ulong Next()
    {
        while (true)
        {
            ulong token = Permute(++_counter);
            if (token != 0)
                return token;
        }
    }

    private ulong Permute(ulong value)
    {
        uint left = (uint)(value >> 32);
        uint right = (uint)value;
        for (int round = 0; round < Rounds; round++)
        {
            Array.Clear(_input);
            _input[0] = (byte)round;
            BinaryPrimitives.WriteUInt32LittleEndian(_input.AsSpan(4), right);
            _encrypt.TransformBlock(_input, 0, 16, _output, 0);
            uint f = BinaryPrimitives.ReadUInt32LittleEndian(_output);
            (left, right) = (right, left ^ f);
        }
        return ((ulong)left << 32) | right;
    }

    public void Dispose()
    {
        _encrypt.Dispose();
        _aes.Dispose();
    }
}
